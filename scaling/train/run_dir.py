"""A run directory's config.json: everything that determines the run's results, written by process 0 and
checked on resumption (a different run, or one of another parameter layout, is refused; the mesh and
the settings fitted to the devices may differ), and where the run keeps its tokenised data.
"""
import dataclasses
import json
import os
import sys

import flax
import jax
import optax
import orbax.checkpoint
from etils import epath

from scaling import data
from scaling.config import MeshConfig, UsageError
from scaling.flops import CONVENTION
from scaling.train.metrics import is_local, make_parent
from scaling.train.run import Run

# Version of the parameter and config layout; runs written by another layout are refused, not mixed.
LAYOUT = 3


def run_config(run: Run, mesh_cfg: MeshConfig, extra: dict | None = None) -> dict:
    """Everything that determines a run's results, as recorded in config.json (with the remat,
    microbatches and mesh its devices got, which may differ when it resumes elsewhere)."""
    return {
        "layout": LAYOUT,
        "model": dataclasses.asdict(run.model_cfg),
        "train": dataclasses.asdict(run.train_cfg),
        "mesh": dataclasses.asdict(mesh_cfg),
        "counts": dataclasses.asdict(run.arch.counts(run.model_cfg)),
        "flops_convention": CONVENTION,
        "data_fingerprint": data.fingerprint(run.train_cfg.data, **run.data_options),
        **(extra or {}),
    }


def _versions() -> dict:
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "python": sys.version.split()[0],
    }


# Settings that fit a run to its devices: they may change when it resumes elsewhere; the math does not.
FITTED = {"model": ("remat", "unroll_layers"), "train": ("microbatches",)}


def _comparable(config: dict) -> dict:
    kept = {key: value for key, value in config.items()
            if key not in ("versions", "hardware", "mesh", "memory", "data_cache")}
    for part, fields in FITTED.items():
        kept[part] = {key: value for key, value in kept[part].items() if key not in fields}
    return kept


def read_config(run_dir: str) -> dict | None:
    """config.json of a run directory (None if there is none); a run of another layout is refused."""
    path = epath.Path(run_dir) / "config.json"
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    if config.get("layout") != LAYOUT:
        raise UsageError("--workdir", f"{run_dir} was written by an earlier version of this toolkit (another "
                                      "parameter layout) and cannot be resumed; choose a new --workdir")
    return config


def check_config(run_dir: str, config: dict) -> None:
    """Refuses to mix results with a different run already in `run_dir`.

    The mesh and the fitted settings may differ between a run and its resumption (checkpoints
    restore onto any layout).
    """
    existing = read_config(run_dir)
    if existing is not None and _comparable(existing) != _comparable(json.loads(json.dumps(config))):
        raise UsageError("--workdir", f"{run_dir} holds a run with a different configuration; choose a new --workdir")


def write_file(path, content: str | bytes) -> None:
    """Writes one shared file, local or an object (gs://), from process 0, the one writer of shared files."""
    if jax.process_index() == 0:
        path = epath.Path(path)
        make_parent(path)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


def write_json(path, record: dict) -> None:
    """write_file of one JSON record."""
    write_file(path, json.dumps(record, indent=2))


def absolute(path: str) -> str:
    """A local path made absolute, to be recorded; a URL (gs://...) as it is."""
    return os.path.abspath(path) if is_local(path) else path


def write_config(run_dir: str, config: dict) -> None:
    """Writes config.json as this invocation runs it (mesh and fitted settings included)."""
    write_json(epath.Path(run_dir) / "config.json", {**config, "versions": _versions()})


def default_cache_dir(run_dir: str) -> str:
    """Where a run keeps its tokenizer and tokenised data unless told: beside it, if it is local."""
    if not is_local(run_dir):
        return os.path.expanduser("~/.cache/scaling")
    return os.path.join(str(run_dir), "data")
