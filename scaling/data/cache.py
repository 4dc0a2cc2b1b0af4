"""Files under a cache directory: atomic writes, file-name-safe keys, and token streams kept as .npy."""
import hashlib
import json
import os
import re
import tempfile

import numpy as np


def write_atomically(path: str, write) -> None:
    """Calls `write(file)` on a fresh temporary file beside `path`, then renames it to `path`: readers
    (other processes and hosts too) see the whole file or none, and writers of the same bytes may race."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path), suffix=".tmp")
    with os.fdopen(handle, "wb") as f:
        write(f)
    os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the file from other users of a shared cache
    os.replace(temporary, path)


def safe(text: str) -> str:
    """`text` usable in a file name: "tfds:c4/en" -> "tfds_c4_en"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def key(description) -> str:
    """16 hex digits of the sha256 of a JSON-serialisable description."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def save_tokens(stem: str, tokens: np.ndarray, meta: dict) -> None:
    """Writes `stem`.npy, then `stem`.json: the .json, written last, marks the pair complete."""
    write_atomically(f"{stem}.npy", lambda f: np.save(f, tokens))
    write_atomically(f"{stem}.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


def load_tokens(stem: str) -> tuple[np.ndarray, dict] | None:
    """The tokens of `stem`.npy, memory-mapped (read-only), and its .json; None if not both there."""
    if not os.path.exists(f"{stem}.json"):
        return None
    with open(f"{stem}.json") as f:
        meta = json.load(f)
    return np.load(f"{stem}.npy", mmap_mode="r"), meta
