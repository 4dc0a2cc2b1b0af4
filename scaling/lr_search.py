"""Per-architecture learning rates with equal tuning effort (`isoflop --lr_search K`).

Before its sweep, every architecture trains the same K-point log-spaced grid of peak learning rates,
GRID_SPAN decades around the Kaplan et al. rate of its calibration model: the compute-optimal shape of
a reduced calibration budget (the smallest budget / CALIBRATION_REDUCTION), on the sweep's data. The
grid's best (lowest final eval loss) is transferred to every size of that architecture by the same
rule for all: the ratio of the Kaplan rates, lr(N) = lr_best x kaplan(N) / kaplan(N_calibration).
The grid, every calibration result and the chosen rates are recorded in plan.json; the calibration
runs live in <workdir>/runs/<run_id> and resume like every other run.
"""
import dataclasses
import math

import numpy as np

from scaling.config import ModelConfig, TrainConfig, UsageError
from scaling.models.registry import get_architecture

CALIBRATION_REDUCTION = 4.0
GRID_SPAN = (-0.5, 1.5)  # decades around the Kaplan rate: 0.32x .. 32x (nGPT's best is ~10x GPT's)


def kaplan_learning_rate(nonembed_params: float) -> float:
    """Peak LR for a model size: 0.003239 - 0.0001395 ln N (Kaplan et al. 2020, eq. D.1)."""
    return 0.003239 - 0.0001395 * math.log(nonembed_params)


def grid_multipliers(points: int) -> list[float]:
    """The K multipliers of the Kaplan rate every architecture tries."""
    if points < 3:
        raise UsageError("--lr_search", f"{points} points cannot bracket a best rate; use at least 3 (e.g. 4)")
    return [float(m) for m in np.logspace(*GRID_SPAN, points)]


def calibration(base: ModelConfig, shape: ModelConfig, train_cfg: TrainConfig, points: int, budget: float,
                run_entry) -> dict:
    """One architecture's calibration: its shape, budget and the K grid runs (`run_entry(cfg, train, lr)`)."""
    kaplan = kaplan_learning_rate(get_architecture(base.arch).counts(shape).active_nonembed_params)
    runs = [run_entry(shape, dataclasses.replace(train_cfg, learning_rate=kaplan * m), f"lr{kaplan * m:.3g}")
            for m in grid_multipliers(points)]
    return {"budget": budget, "kaplan_lr": kaplan, "runs": runs, "losses": None, "chosen_lr": None}


def transferred(chosen_lr: float, calibration_kaplan: float, active_nonembed_params: float) -> float:
    """The chosen rate carried to a size by the ratio of Kaplan rates."""
    return chosen_lr * kaplan_learning_rate(active_nonembed_params) / calibration_kaplan


def choose(calibration_entry: dict, losses: list[float | None]) -> float:
    """The grid rate with the lowest finite final eval loss (UsageError-free: a fully diverged grid
    falls back to the Kaplan rate, and says so in the plan)."""
    finite = [(loss, run["train"]["learning_rate"]) for loss, run in zip(losses, calibration_entry["runs"])
              if loss is not None and math.isfinite(loss)]
    return min(finite)[1] if finite else calibration_entry["kaplan_lr"]
