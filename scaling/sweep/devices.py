"""A plan against the devices: the mesh checked, every run's remat and microbatches fitted to the memory,
wall time estimated (measured here, or for target hardware), and the plan printed as a table.
"""
import dataclasses

from scaling import sharding
from scaling.benchmark import time_train_step
from scaling.config import MeshConfig, TrainConfig
from scaling.models.registry import get_architecture, model_config_from_dict
from scaling.sweep.plan import all_runs
from scaling.train import fitting
from scaling.train.metrics import format_duration

PROBE_FLOPS = 5e10


def check_mesh(plan: dict, mesh_cfg: MeshConfig, devices=None) -> None:
    """UsageError unless every planned model and batch divides over the mesh of `devices` (default: all)."""
    mesh = sharding.make_mesh(mesh_cfg, devices)
    for run in plan["runs"]:
        model_cfg = model_config_from_dict(run["model"])
        get_architecture(model_cfg.arch).check_fits(mesh, model_cfg, run["train"]["batch_size"])


def fit_plan(plan: dict, mesh_cfg: MeshConfig, memory: int | None, log=print, devices=None) -> dict:
    """Each run's remat, microbatches and mesh chosen to fit `memory` bytes per device of `devices`
    (default: all; compile only, scaling/train/fitting.py), with its compiled memory per device;
    unchanged settings where the memory is unknown (a CPU: no remat, one microbatch). Logs a line per
    run fitted (compiling a large plan takes minutes to an hour). UsageError if a run cannot fit."""
    runs = all_runs(plan)
    for i, run in enumerate(runs, 1):
        fitted = fitting.fit(model_config_from_dict(run["model"]), TrainConfig(**run["train"]), mesh_cfg, memory,
                             name=f"run {run['run_id']}", devices=devices)
        run["model"]["remat"] = fitted.run.model_cfg.remat
        run["train"]["microbatches"] = fitted.run.train_cfg.microbatches
        run.update(mesh=dataclasses.asdict(fitted.mesh_cfg), gib_per_device=fitted.gib_per_device)
        if fitted.gib_per_device is not None:
            log(f"[{i}/{len(runs)}] fitted {run['run_id']}: remat {run['model']['remat']}, "
                f"microbatches {run['train']['microbatches']}, {fitted.gib_per_device:.3g} GiB per device"
                + (f"; {fitted.note}" if fitted.note else "") + f" ({format_duration(fitted.seconds)} compiling)")
    return plan


def estimate_seconds(plan: dict, mesh_cfg: MeshConfig) -> dict[str, float]:
    """Estimated wall time per run from a measured throughput probe on the current devices.

    The probe compiles and times the real train step of the plan's smallest model at the plan's batch
    size, capped at PROBE_FLOPS per device per step (at least one sequence per batch shard) so that
    it takes seconds even on a laptop. Each run's estimate is its FLOPs over the probe's achieved
    FLOP/s; larger models and batches usually run at a higher FLOP/s, so the estimate errs long.
    """
    smallest = min(plan["runs"], key=lambda r: r["flops_per_token"])
    model_cfg = model_config_from_dict(smallest["model"])
    mesh = sharding.make_mesh(mesh_cfg)
    ways = sharding.batch_ways(mesh)
    per_sequence = smallest["flops_per_token"] * model_cfg.seq_len
    batch = smallest["train"]["batch_size"]
    while batch > ways and batch * per_sequence > PROBE_FLOPS * mesh.size:
        batch //= 2
    probe = time_train_step(model_cfg, max(batch, ways), mesh_cfg, steps=3, warmup=1)
    flops_per_s = probe["flops_per_token"] * probe["tokens_per_s"]
    return {r["run_id"]: r["tokens"] * r["flops_per_token"] / flops_per_s for r in all_runs(plan)}


def estimate_on_target(plan: dict, accelerator, devices: list, mfu: float) -> dict[str, float]:
    """Wall time per run on `devices` of `accelerator` at model FLOPs utilisation `mfu`."""
    rate = len(devices) * accelerator.peak_tflops * 1e12 * mfu
    return {r["run_id"]: r["tokens"] * r["flops_per_token"] / rate for r in all_runs(plan)}


def format_plan(plan: dict, seconds: dict[str, float]) -> str:
    """The plan as a table with each run's fitted settings and estimated wall time."""
    budgets = ", ".join(f"{b:.3g}" for b in plan["budgets"])
    lines = [
        f"isoFLOP plan: budget {budgets} FLOPs, seq_len {plan['seq_len']}, data {plan['data']}, "
        f"seeds {', '.join(map(str, plan['seeds']))}",
        f"{'run_id':<26}{'d_model':>8}{'layers':>7}{'heads':>6}{'params':>12}{'nonembed':>12}"
        f"{'tokens':>12}{'steps':>8}{'batch':>6}{'lr':>9}{'remat':>6}{'micro':>6}{'GiB/dev':>8}{'est. time':>11}",
    ]
    search = plan.get("lr_search")
    if search:
        grid = ", ".join(f"{m:.2g}" for m in search["grid_multipliers"])
        lines.insert(1, f"LR search: {search['points']} rates per architecture (x {grid} its Kaplan rate) at a "
                        f"calibration budget of {search['calibration_budget']:.3g} FLOPs (the lr* runs); the best "
                        "is carried to every size by the Kaplan ratio; until then the table shows Kaplan rates")
    for r in all_runs(plan):
        m, t = r["model"], r["train"]
        gib = "-" if r.get("gib_per_device") is None else f"{r['gib_per_device']:.3g}"
        lines.append(
            f"{r['run_id']:<26}{m['d_model']:>8}{m['n_layers']:>7}{m['n_heads']:>6}{r['params']:>12.3g}"
            f"{r['nonembed_params']:>12.3g}{r['tokens']:>12.3g}{r['steps']:>8}{t['batch_size']:>6}"
            f"{t['learning_rate']:>9.2e}{m['remat']:>6}{t['microbatches']:>6}{gib:>8}"
            f"{format_duration(seconds[r['run_id']]):>11}"
        )
    lines.append(f"total estimated wall time: {format_duration(sum(seconds.values()))}")
    return "\n".join(lines)
