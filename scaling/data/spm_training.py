"""Training the SentencePiece model of `spm:N` on a sample of the training split, reproducibly.

The model is a unigram language model (SentencePiece's default, Kudo 2018), trained on whole documents
drawn in a seeded order until SAMPLE_BYTES of text; options (see OPTIONS) keep the pieces spelling the
text exactly, so bits per byte counts the real bytes.
"""
import io

import sentencepiece

from scaling.config import UsageError
from scaling.data.cache import write_atomically

MODEL_TYPE = "unigram"
SAMPLE_BYTES = 2**23  # 8 MiB: single-threaded training took 153 s for spm:1024 on C4-like web text (Zen 3)
SAMPLE_SEED = 0
UNK_ID, EOD_ID = 0, 1
MIN_VOCAB = 256 + 2  # the byte-fallback pieces, <unk> and <eod>
OPTIONS = {
    "model_type": MODEL_TYPE,
    # Characters outside the vocabulary become byte pieces: any text encodes, with no <unk>.
    "byte_fallback": True,
    # No normalisation, whitespace squeezing or dummy "▁" prefix: ids spell the text byte for byte.
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "allow_whitespace_only_pieces": True,  # indentation runs become pieces
    "unk_id": UNK_ID,
    "eos_id": EOD_ID,
    "eos_piece": "<eod>",
    "bos_id": -1,
    "pad_id": -1,
    "num_threads": 1,  # multithreaded training is not bit-reproducible
    "minloglevel": 2,
}


def sample(documents, budget: int) -> list[str]:
    """Documents (UTF-8 bytes) in a seeded order until `budget` bytes, as text.

    grain's MapDataset shuffle permutes indices lazily, so this costs O(1) memory however many
    documents the split has.
    """
    texts, total = [], 0
    for document in documents.shuffle(seed=SAMPLE_SEED).to_iter_dataset():
        if total >= budget:
            break
        texts.append(document.decode())
        total += len(document)
    return texts


def _reason(error: RuntimeError) -> str:
    """SentencePiece's message without its source location, its fix said in terms of N."""
    message = str(error).partition("] ")[2] or str(error)
    return message.replace("Increase vocab_size or decrease character_coverage with --character_coverage option.",
                           "Raise N.")


def train(documents, size: int, path: str, *, spec: str) -> None:
    """Trains a `size`-piece model on a sample of `documents` (whole documents as SentencePiece's
    sentences: it strips a sentence's final newline, so lines would lose theirs) and writes it to `path`.

    A size the sample cannot support (SentencePiece refuses it) is a UsageError naming the bound.
    """
    texts = sample(documents, SAMPLE_BYTES)
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(SAMPLE_SEED)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=size,
            max_sentence_length=4 * max(map(len, texts), default=1), **OPTIONS,  # in bytes: <= 4 per character
        )
    except RuntimeError as error:
        sampled = sum(len(text.encode()) for text in texts)
        raise UsageError("--tokenizer", f"{spec} on a {sampled}-byte sample of the training documents: "
                                        f"{_reason(error)}") from None
    write_atomically(path, lambda f: f.write(model.getvalue()))
