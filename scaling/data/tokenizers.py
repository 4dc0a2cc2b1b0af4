"""Tokenizers named by a `--tokenizer` spec: `bytes` (UTF-8 bytes) or `spm:N` (a trained SentencePiece model).

A tokenizer has `vocab_size`, `eod_id`, `encode(text) -> ids` (a 1-D int32 array), `decode(ids) -> str`
and a JSON `fingerprint`. Documents are joined with `eod_id` in the packed stream
(scaling/data/packing.py), so it is an id no text maps to.
"""
import hashlib
import os
import re

import numpy as np
import sentencepiece

from scaling.config import UsageError
from scaling.data import spm_training

_SPEC = re.compile(r"spm:(\d+)")
_CHOICES = f"choose bytes or spm:N, a SentencePiece vocabulary of N >= {spm_training.MIN_VOCAB} pieces (e.g. spm:8192)"


def _text(text: bytes | str) -> str:
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and an end-of-document id 256 (vocabulary 257).

    The end-of-document id joins documents in the packed stream, so it must be one no byte takes:
    a NUL separator would be indistinguishable from a NUL in the text.
    """

    vocab_size = 257
    eod_id = 256
    fingerprint = {"spec": "bytes", "vocab_size": vocab_size, "eod_id": eod_id}

    def encode(self, text: bytes | str) -> np.ndarray:
        return np.frombuffer(text.encode() if isinstance(text, str) else text, np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """The text of `ids`, an end-of-document id as a newline."""
        return bytes(10 if i == self.eod_id else int(i) for i in ids).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model file (see spm_training.py for how it was trained), fingerprinted by the
    sha256 of its bytes. Its end-of-document piece is SentencePiece's eos piece `<eod>`."""

    def __init__(self, spec: str, model_path: str):
        with open(model_path, "rb") as f:
            model = f.read()
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model)
        self.vocab_size = self._processor.vocab_size()
        self.eod_id = self._processor.eos_id()
        self.fingerprint = {
            "spec": spec,
            "model_type": spm_training.MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
            "sha256": hashlib.sha256(model).hexdigest(),
        }

    def encode(self, text: bytes | str) -> np.ndarray:
        """Ids of `text` (bytes are read as UTF-8); byte fallback leaves no unknown piece."""
        return np.asarray(self._processor.encode(_text(text)), np.int32)

    def decode(self, ids) -> str:
        return self._processor.decode([int(i) for i in ids])


def check_spec(spec: str) -> int | None:
    """The N of "spm:N", None for "bytes"; UsageError for anything else or N too small to hold the bytes."""
    if spec == "bytes":
        return None
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise UsageError("--tokenizer", f"unknown tokenizer {spec!r}; {_CHOICES}")
    size = int(match.group(1))
    if size < spm_training.MIN_VOCAB:
        raise UsageError("--tokenizer", f"{spec} is too small: SentencePiece needs {spm_training.MIN_VOCAB} pieces "
                                        "for the 256 byte pieces, <unk> and <eod>; raise N")
    return size


def model_path(cache_dir: str, data_key: str, size: int) -> str:
    """Where the spm:`size` model of the data `data_key` (a file-name-safe data name and hash) is kept."""
    return os.path.join(cache_dir, "tokenizers", f"{data_key}-spm{size}.model")


def make_tokenizer(spec: str, *, cache_dir: str | None, data_key: str, training_documents):
    """The tokenizer of `spec`. For spm:N, the model of this data in `cache_dir` is loaded if present
    and otherwise trained on `training_documents()` (a grain MapDataset of the train split) and saved.

    Every process that lacks the file trains it deterministically (same sample, seed, one thread), so
    hosts with separate disks agree, and hosts sharing one write the same bytes (atomically).
    """
    size = check_spec(spec)
    if size is None:
        return ByteTokenizer()
    if cache_dir is None:
        raise ValueError(f"{spec} needs a cache_dir to keep its trained model in")
    path = model_path(cache_dir, data_key, size)
    if not os.path.exists(path):
        spm_training.train(training_documents(), size, path, spec=spec)
    return SentencePieceTokenizer(spec, path)
