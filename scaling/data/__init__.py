"""Token data for training and evaluation: named random-access sources (documents tokenised and packed),
their bytes per token, and a step-indexed batch loader."""
from scaling.data.loader import BatchLoader
from scaling.data.sources import SPLITS, bytes_per_token, fingerprint, make_source, tokenizer, vocab_size

__all__ = ["SPLITS", "BatchLoader", "bytes_per_token", "fingerprint", "make_source", "tokenizer", "vocab_size"]
