"""Token data for training and evaluation: named random-access sources and a step-indexed batch loader."""
from scaling.data.loader import BatchLoader
from scaling.data.sources import fingerprint, make_source, vocab_size

__all__ = ["BatchLoader", "fingerprint", "make_source", "vocab_size"]
