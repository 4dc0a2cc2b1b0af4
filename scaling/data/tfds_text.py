"""The large-scale path: documents of a TensorFlow Datasets text dataset, byte-level, via ArrayRecord."""
import numpy as np

from scaling.config import UsageError

PAD = 0
_EVAL_SPLITS = ("validation", "test")


def _tfds():
    """tensorflow_datasets, imported only when a tfds name is used (it is an optional extra)."""
    try:
        import tensorflow_datasets  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UsageError("--data", "install the [data] extra: pip install -e '.[data]'") from None
    return tensorflow_datasets


def _dataset_name(name: str) -> str:
    return name.removeprefix("tfds:")


def _open(name: str, split: str):
    """tfds.data_source for `split`; "eval" is the validation split, or test where there is none."""
    tfds = _tfds()
    if split == "train":
        return tfds.data_source(name, split="train")
    for candidate in _EVAL_SPLITS:
        try:
            return tfds.data_source(name, split=candidate)
        except (KeyError, ValueError):
            continue
    raise UsageError("--data", f"tfds:{name} has neither a validation nor a test split")


class DocumentSource:
    """One record per document: UTF-8 bytes truncated to seq_len + 1, padded with PAD.

    `padded` tells the loader to give padded targets weight 0. NUL bytes are dropped from the
    text, so every PAD token is padding.
    """

    padded = True

    def __init__(self, documents, seq_len: int):
        self._documents = documents
        self._length = seq_len + 1

    def __len__(self) -> int:
        return len(self._documents)

    def __getitem__(self, index: int) -> np.ndarray:
        text = self._documents[index]["text"].replace(b"\x00", b"")[: self._length]
        record = np.full(self._length, PAD, np.int32)
        record[: len(text)] = np.frombuffer(text, np.uint8)
        return record

    def __repr__(self) -> str:
        return f"DocumentSource(documents={len(self)}, length={self._length})"


def make_source(name: str, split: str, seq_len: int) -> DocumentSource:
    """Documents of `split` of the tfds dataset in `name` ("tfds:NAME")."""
    return DocumentSource(_open(_dataset_name(name), split), seq_len)


def fingerprint(name: str) -> dict:
    """The dataset name (which may pin a version, e.g. tfds:lm1b:1.1.0) and the tokenisation."""
    return {"name": name, "tokenizer": "utf8-bytes", "pad_id": PAD}
