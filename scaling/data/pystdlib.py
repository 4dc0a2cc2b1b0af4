"""The embedded default corpus: the running interpreter's standard library, one document per file."""
import functools
import hashlib
import pathlib
import platform
import sysconfig
from typing import NamedTuple

import grain

SEPARATOR = b"\x00"  # between paths and contents in the fingerprint's hash
EVAL_PERCENT = 5
_EXCLUDED_DIRS = {"site-packages", "dist-packages"}


class Corpus(NamedTuple):
    """Documents per split, the files behind them and the whole corpus's fingerprint."""

    documents: dict  # split -> tuple of each file's bytes
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
    """Reads the standard library once per process."""
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
        documents={split: tuple(data for _, data in items) for split, items in by_split.items()},
        files={split: tuple(path for path, _ in items) for split, items in by_split.items()},
        fingerprint=fingerprint,
    )


def documents(name: str, split: str, data_dir: str | None, text_key: str) -> grain.MapDataset:
    """The split's files, in path order, one document each (`data_dir` and `text_key` do not apply)."""
    del name, data_dir, text_key
    return grain.MapDataset.source(load().documents[split])


def fingerprint(name: str, data_dir: str | None, text_key: str) -> dict:
    """File count, byte count and sha256 over both splits, plus the Python version."""
    del name, data_dir, text_key
    return dict(load().fingerprint)
