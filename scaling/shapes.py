"""The model-size family: a target non-embedding parameter count -> (d_model, n_layers, n_heads, d_ff).

Rule (deterministic, documented so sweeps are reproducible):
- head dim 64 (n_heads = d_model / 64); SwiGLU hidden d_ff = 8/3 d_model rounded up to a multiple of 64,
  so a block holds about 4 d^2 (attention) + 3 * 8/3 d^2 (SwiGLU) = 12 d^2 parameters (Kaplan et al.
  2020: N = 12 L d^2);
- candidates are every (n_layers, d_model = 64 k) with aspect ratio d_model / n_layers in [32, 128],
  the flat optimum of Kaplan et al. (2020, fig. 5: loss within ~1% over ratios 20..200);
- the chosen one minimises |ln(N / target)| + 0.25 |ln(ratio / 64)|: nearest in size, and among
  near-equal sizes the one closest to the aspect ratio 64 of the Chinchilla table's small models;
- an architecture may need a minimum depth (`ArchOptions.min_layers`, e.g. enough blocks for one
  of them to hold its special layer).
Sizes run from 49k (d=64, L=1) to ~10B (d=3776, L=59) non-embedding parameters; the density of
the family at small sizes (varying depth and width) keeps tiny sweeps' points distinct.
"""
import dataclasses
import functools
import math

import numpy as np

from scaling.config import ModelConfig, UsageError

HEAD_DIM = 64
ASPECT_RATIO = 64
MIN_PARAMS = 40_000
MAX_PARAMS = 12e9


def d_ff_for(d_model: int) -> int:
    """8/3 d_model rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * d_model / 3 / 64)


def nonembed_params(d_model: int, n_layers: int) -> int:
    """Non-embedding parameters of a baseline GPT of this shape (blocks + final norm)."""
    per_block = 4 * d_model**2 + 3 * d_model * d_ff_for(d_model) + 2 * d_model
    return n_layers * per_block + d_model


@functools.cache
def _candidates() -> tuple[tuple[int, int, int], ...]:
    """All (params, n_layers, d_model) of the family, aspect ratio within [32, 128]."""
    return tuple(
        (nonembed_params(d, layers), layers, d)
        for layers in range(1, 129)
        for d in range(HEAD_DIM, 128 * layers + 1, HEAD_DIM)
        if 32 * layers <= d <= 128 * layers
    )


@functools.cache
def _scored_candidates(min_layers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates with at least `min_layers` blocks as arrays: ln N, the aspect-ratio penalty, and
    (n_layers, d_model) rows (shape_for_params scores thousands of them per call, in planning loops)."""
    kept = np.array([c for c in _candidates() if c[1] >= min_layers], dtype=np.float64).reshape(-1, 3)
    params, layers, d = kept.T
    return np.log(params), 0.25 * np.abs(np.log(d / layers / ASPECT_RATIO)), kept[:, 1:].astype(int)


def shape_for_params(target: float, base: ModelConfig = ModelConfig()) -> ModelConfig:
    """The family member for `target` non-embedding parameters, among those with at least
    `base.options.min_layers()` blocks; other fields come from `base`."""
    if not (MIN_PARAMS <= target <= MAX_PARAMS):
        raise UsageError("--size", f"choose a size between {MIN_PARAMS:.0e} and {MAX_PARAMS:.0e} parameters")
    log_params, penalty, shapes = _scored_candidates(base.options.min_layers())
    if not len(shapes):
        raise UsageError(base.options.depth_flag, f"the size family has at most {_candidates()[-1][1]} blocks; "
                                                  "choose fewer")
    n_layers, d_model = (int(v) for v in shapes[np.argmin(np.abs(log_params - math.log(target)) + penalty)])
    return dataclasses.replace(
        base, d_model=d_model, n_layers=n_layers, n_heads=d_model // HEAD_DIM, d_ff=d_ff_for(d_model)
    )
