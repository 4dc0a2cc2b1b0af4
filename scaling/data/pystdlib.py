"""The embedded default corpus: byte-level tokens of the running interpreter's standard library."""
import functools
import hashlib
import pathlib
import platform
import sysconfig
from typing import NamedTuple

import numpy as np

from scaling.data.windows import WindowSource

SEPARATOR = b"\x00"
EVAL_PERCENT = 5
_EXCLUDED_DIRS = {"site-packages", "dist-packages"}


class Corpus(NamedTuple):
    """Token streams per split, the files behind them and the whole corpus's fingerprint."""

    tokens: dict  # split -> np.uint8 stream
    files: dict  # split -> tuple of relative paths
    fingerprint: dict


def stdlib_files(root: pathlib.Path) -> list[str]:
    """Relative paths of the `*.py` files under `root`, sorted, outside installed packages."""
    paths = (path.relative_to(root) for path in root.rglob("*.py"))
    return sorted(path.as_posix() for path in paths if not _EXCLUDED_DIRS & set(path.parts))


def split_of(relative_path: str) -> str:
    """Returns "eval" for about EVAL_PERCENT% of paths, chosen by a stable hash, else "train"."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % 100 < EVAL_PERCENT else "train"


def _read(root: pathlib.Path, files: list[str]) -> tuple[dict, str]:
    """The (path, bytes) pairs of each split, and a sha256 over every path and its bytes in order."""
    by_split = {"train": [], "eval": []}
    digest = hashlib.sha256()
    for relative_path in files:
        data = (root / relative_path).read_bytes()
        digest.update(relative_path.encode() + SEPARATOR + data + SEPARATOR)
        by_split[split_of(relative_path)].append((relative_path, data))
    return by_split, digest.hexdigest()


@functools.lru_cache(maxsize=None)
def load() -> Corpus:
    """Reads and tokenises the standard library once per process."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    by_split, sha256 = _read(root, files)
    fingerprint = {
        "name": "pystdlib",
        "python_version": platform.python_version(),
        "files": len(files),
        "bytes": sum(len(data) for items in by_split.values() for _, data in items),
        "sha256": sha256,
    }
    return Corpus(
        tokens={
            split: np.frombuffer(SEPARATOR.join(data for _, data in items), np.uint8)
            for split, items in by_split.items()
        },
        files={split: tuple(path for path, _ in items) for split, items in by_split.items()},
        fingerprint=fingerprint,
    )


def make_source(name: str, split: str, seq_len: int) -> WindowSource:
    """Windows of seq_len + 1 tokens over the split's stream."""
    del name
    return WindowSource(load().tokens[split], seq_len)


def fingerprint(name: str) -> dict:
    """File count, byte count and sha256 over both splits, plus the Python version."""
    del name
    return dict(load().fingerprint)
