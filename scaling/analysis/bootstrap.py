"""Percentile bootstrap intervals: PERCENTILES of RESAMPLES resamples (fixed seed), each budget's runs
resampled with replacement, seeds averaged per size, and everything refitted.
"""
import numpy as np

RESAMPLES = 1000
PERCENTILES = (2.5, 97.5)


def resample(rows, rng) -> list[dict]:
    """A bootstrap resample: len(rows) rows drawn with replacement."""
    return [rows[i] for i in rng.integers(len(rows), size=len(rows))]


def interval(samples) -> list[float] | None:
    """The PERCENTILES of the finite samples, None if there are none."""
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    return np.percentile(finite, PERCENTILES).tolist() if finite.size else None


def bootstrap_note(resamples: int, seed: int) -> dict:
    """How the intervals were made, recorded beside them."""
    return {"resamples": resamples, "seed": seed, "percentiles": list(PERCENTILES),
            "unit": "each budget's runs, resampled with replacement"}
