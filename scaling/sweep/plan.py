"""An isoFLOP sweep's plan (Chinchilla approach 2, REFERENCE.md section 6): which models, on how many tokens.

For a budget C, the expected optimum N_opt solves C = flops_per_token(N) * 20 N (D ~ 20 N). The plan
samples `num_sizes` sizes evenly in log N over N_opt / 4 .. 4 N_opt, each trained on
D = C / flops_per_token tokens with its own warmup + cosine schedule ending at D, at one batch size
shared by every architecture; with `--lr_search`, a calibration grid of learning rates comes first.
"""
import dataclasses
import math

import numpy as np

from scaling import lr_search as lr_search_lib
from scaling.config import ModelConfig, TrainConfig, UsageError
from scaling.flops import CONVENTION
from scaling.lr_search import kaplan_learning_rate
from scaling.models.registry import get_architecture
from scaling.shapes import MAX_PARAMS, MIN_PARAMS, shape_for_params
from scaling.train.run_dir import LAYOUT

TOKENS_PER_PARAM = 20
SPAN = 4.0
MIN_STEPS = 200
MAX_BATCH = 512
EVAL_TOKENS = 65536
EVALS_PER_RUN = 4


def optimal_size(budget: float, base: ModelConfig) -> float:
    """N with flops_per_token(shape(N)) * 20 N = budget (bisection in log N over the size family)."""
    counts = get_architecture(base.arch).counts
    lo, hi = math.log(MIN_PARAMS), math.log(MAX_PARAMS)
    for _ in range(60):
        mid = (lo + hi) / 2
        n = math.exp(mid)
        cost = counts(shape_for_params(n, base)).flops_per_token * TOKENS_PER_PARAM * n
        lo, hi = (mid, hi) if cost < budget else (lo, mid)
    return math.exp(lo)


def _batch_size(tokens: int, seq_len: int) -> int:
    """Largest power of two <= 512 sequences giving a run of `tokens` (the sweep's largest model) MIN_STEPS steps."""
    batch = 2 ** max(0, math.floor(math.log2(max(1, tokens / (MIN_STEPS * seq_len)))))
    return min(MAX_BATCH, batch)


def shared_batch_size(budget: float, bases: list[ModelConfig], num_sizes: int) -> int:
    """The sweep's batch, the same for every architecture (a fair comparison): the smallest of the
    architectures' `_batch_size`s for their largest planned model."""
    batches = []
    for base in bases:
        shapes = _sizes(budget, base, num_sizes)
        if shapes:
            largest = get_architecture(base.arch).counts(shapes[-1])
            batches.append(_batch_size(int(budget / largest.flops_per_token), base.seq_len))
    return min(batches, default=1)


def _run_entry(model_cfg: ModelConfig, train_cfg: TrainConfig, budget: float, suffix: str = "") -> dict:
    arch = model_cfg.arch
    counts = get_architecture(arch).counts(model_cfg)
    return {
        "run_id": f"{arch}-{counts.nonembed_params / 1e6:.3g}M{suffix}",
        "arch": arch,
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(train_cfg),
        **dataclasses.asdict(counts),
        "tokens": train_cfg.tokens,
        "steps": train_cfg.steps(model_cfg.seq_len),
        "budget": budget,
    }


def _sizes(budget: float, base: ModelConfig, num_sizes: int) -> list[ModelConfig]:
    """Distinct shapes of the family at N_opt * 4^t, t evenly spaced in [-1, 1], smallest first."""
    targets = optimal_size(budget, base) * SPAN ** np.linspace(-1, 1, num_sizes)
    shapes = {shape_for_params(min(max(t, MIN_PARAMS), MAX_PARAMS), base) for t in targets}
    return sorted(shapes, key=lambda s: get_architecture(base.arch).counts(s).nonembed_params)


def _train_config(shape: ModelConfig, budget: float, train_base: TrainConfig, batch: int, learning_rate) -> TrainConfig:
    """A run's budget-derived training: D = C / flops_per_token tokens, evals, the given or Kaplan LR."""
    counts = get_architecture(shape.arch).counts(shape)
    tokens = int(budget / counts.flops_per_token)
    return dataclasses.replace(
        train_base,
        tokens=tokens,
        batch_size=batch,
        learning_rate=learning_rate or kaplan_learning_rate(counts.active_nonembed_params),
        eval_batches=max(1, math.ceil(EVAL_TOKENS / (batch * shape.seq_len))),
        eval_every=max(1, tokens // (batch * shape.seq_len) // EVALS_PER_RUN),
    )


def _arch_runs(budget, base, num_sizes, train_base, batch, learning_rate, suffix="") -> list[dict]:
    """One architecture's runs: every size that gets at least one step of the sweep's batch."""
    runs = []
    for shape in _sizes(budget, base, num_sizes):
        train_cfg = _train_config(shape, budget, train_base, batch, learning_rate)
        if train_cfg.steps(shape.seq_len) >= 1:
            runs.append(_run_entry(shape, train_cfg, budget, suffix))
    return runs


def _smallest_curve_budget(base: ModelConfig, num_sizes: int, batch_size: int | None) -> float:
    """The smallest budget (to a factor 1.25) whose sweep holds 3 distinct trainable sizes."""
    budget = 1e8
    while len(_arch_runs(budget, base, num_sizes, TrainConfig(),
                         batch_size or shared_batch_size(budget, [base], num_sizes), None)) < 3:
        budget *= 1.25
    return budget


def check_budgets(budgets: list[float]) -> list[float]:
    """The budgets, each a positive finite number of FLOPs, none repeated."""
    if not budgets or not all(math.isfinite(b) and b > 0 for b in budgets):
        raise UsageError("--budget", f"must be positive finite numbers of FLOPs (e.g. 1e13), got {budgets}")
    if len(set(budgets)) < len(budgets):
        raise UsageError("--budgets", f"{budgets} repeats a budget; list each once")
    return sorted(budgets)


def plan_sweep(
    budgets: float | list[float],
    bases: list[ModelConfig],
    num_sizes: int,
    train_base: TrainConfig,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    seeds: int = 1,
    lr_search: int = 0,
) -> dict:
    """The sweep's runs: per budget and architecture (one base config each, giving its options,
    sequence length and numerics), `num_sizes` shapes around the expected optimum, each trained with
    `seeds` seeds (data order and initialisation). With `lr_search` K, the learning rates come from a
    K-point calibration grid per architecture (scaling/lr_search.py) and are filled in when it is done."""
    budgets = check_budgets([budgets] if isinstance(budgets, (int, float)) else list(budgets))
    if num_sizes < 3:
        raise UsageError("--num_sizes", "a parabola needs at least 3 sizes")
    if seeds < 1:
        raise UsageError("--seeds", "must be at least 1")
    runs = []
    for budget in budgets:
        batch = batch_size or shared_batch_size(budget, bases, num_sizes)
        for arch_base in bases:
            arch_runs = _arch_runs(budget, arch_base, num_sizes, train_base, batch, learning_rate)
            if len(arch_runs) < 3:
                _refuse_budget(budget, arch_base, num_sizes, batch_size, arch_runs)
            for seed in range(seeds):
                runs += [_seeded(run, train_base.seed + seed, len(budgets) > 1, seeds > 1) for run in arch_runs]
    plan = {
        "layout": LAYOUT,
        **({"budget": budgets[0]} if len(budgets) == 1 else {}),
        "budgets": budgets,
        "archs": [base.arch for base in bases],
        "num_sizes": num_sizes,
        "seeds": [train_base.seed + s for s in range(seeds)],
        "seq_len": bases[0].seq_len,
        "data": train_base.data,
        "flops_convention": CONVENTION,
        "runs": runs,
    }
    if lr_search:
        plan["lr_search"] = _lr_search_plan(bases, budgets[0] / lr_search_lib.CALIBRATION_REDUCTION, train_base,
                                            lr_search, batch_size, plan)
    return plan


def _seeded(run: dict, seed: int, by_budget: bool, by_seed: bool) -> dict:
    """A copy of `run` with its seed, and its run_id telling budgets and seeds apart where a sweep has several."""
    suffix = (f"-C{run['budget']:.2g}" if by_budget else "") + (f"-s{seed}" if by_seed else "")
    return {**run, "run_id": run["run_id"] + suffix, "train": {**run["train"], "seed": seed}}


def _refuse_budget(budget, base, num_sizes, batch_size, arch_runs) -> None:
    need = _smallest_curve_budget(base, num_sizes, batch_size)
    what = "cannot train even the smallest model one step" if not arch_runs else "leaves fewer than 3 sizes"
    depth = base.options
    fix = f"use at least {need:.2g}" + (f" or a smaller {depth.depth_flag}" if depth.min_layers() > 1 else "")
    raise UsageError("--budget", f"{budget:.3g} FLOPs {what} for {base.arch}; {fix}")


def _lr_search_plan(bases, budget, train_base, points, batch_size, plan) -> dict:
    """The calibration runs, and each main run's learning rate left to fill (scaling/lr_search.py)."""
    calibrations = {}
    batch = batch_size or shared_batch_size(budget, bases, 3)  # one batch: the best rate depends on it
    for base in bases:
        shape = shape_for_params(max(optimal_size(budget, base), MIN_PARAMS), base)
        train_cfg = _train_config(shape, budget, train_base, batch, None)

        def entry(cfg, train, suffix):
            return _run_entry(cfg, train, budget, f"-{suffix}")

        calibrations[base.arch] = lr_search_lib.calibration(base, shape, train_cfg, points, budget, entry)
    return {"points": points, "grid_multipliers": lr_search_lib.grid_multipliers(points),
            "calibration_budget": budget, "transfer": "lr x kaplan(N) / kaplan(N_calibration)",
            "applied": False, "calibration": calibrations}


def all_runs(plan: dict) -> list[dict]:
    """The LR-search calibration runs (trained first), then the sweep's runs."""
    search = plan.get("lr_search")
    calibration = [run for entry in search["calibration"].values() for run in entry["runs"]] if search else []
    return calibration + plan["runs"]
