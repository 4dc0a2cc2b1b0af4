"""Maps a `--data` name to its source, vocabulary size and fingerprint."""
from scaling.config import UsageError
from scaling.data import pystdlib, synthetic, tfds_text

SPLITS = ("train", "eval")
BYTE_VOCAB = 256
_VALID = "choose pystdlib, synthetic or tfds:NAME (e.g. tfds:lm1b)"


def _module(name: str):
    """The module implementing data `name`, or UsageError naming the valid choices."""
    if name == "pystdlib":
        return pystdlib
    if name == "synthetic":
        return synthetic
    if name.startswith("tfds:") and len(name) > len("tfds:"):
        return tfds_text
    raise UsageError("--data", f"unknown data {name!r}; {_VALID}")


def make_source(name: str, split: str, seq_len: int):
    """A grain random-access source of np.int32 records of length seq_len + 1.

    Inputs are record[:-1] and targets record[1:]. `split` is "train" or "eval".
    """
    module = _module(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = module.make_source(name, split, seq_len)
    if len(source) == 0:
        raise UsageError("--seq_len", f"{seq_len} leaves no {split} record in {name}; lower it")
    return source


def vocab_size(name: str) -> int:
    """Number of distinct token ids: every source is byte-level."""
    _module(name)
    return BYTE_VOCAB


def fingerprint(name: str) -> dict:
    """A JSON-serialisable description of the data, recorded in run configs."""
    return _module(name).fingerprint(name)
