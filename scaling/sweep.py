"""isoFLOP sweeps (Chinchilla approach 2, REFERENCE.md section 6): plan, estimate, run, fit.

For a budget C, the expected optimum N_opt solves C = flops_per_token(N) * 20 N (D ~ 20 N). The plan
samples `num_sizes` sizes evenly in log N over N_opt / 4 .. 4 N_opt, each trained on
D = C / flops_per_token tokens with its own warmup + cosine schedule ending at D.
"""
import dataclasses
import io
import json
import math

import jax
import numpy as np
from etils import epath

from scaling import analysis, sharding
from scaling.benchmark import time_train_step
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.flops import CONVENTION
from scaling.models.registry import get_architecture, model_config_from_dict
from scaling.shapes import MAX_PARAMS, MIN_PARAMS, shape_for_params
from scaling import lr_search as lr_search_lib
from scaling.lr_search import kaplan_learning_rate
from scaling.train import fitting
from scaling.train.loop import LAYOUT, default_cache_dir, train
from scaling.train.metrics import append_lines, format_duration, make_parent, strict_json

TOKENS_PER_PARAM = 20
SPAN = 4.0
MIN_STEPS = 200
MAX_BATCH = 512
EVAL_TOKENS = 65536
PROBE_FLOPS = 5e10
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
    while len(_arch_runs(budget, base, num_sizes, TrainConfig(), batch_size or shared_batch_size(budget, [base], num_sizes),
                         None)) < 3:
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


def apply_lr_search(plan: dict, workdir: str, mesh_cfg: MeshConfig, log, device_memory_gib) -> None:
    """Trains (or resumes) the calibration runs, records their losses and each architecture's chosen
    rate, and sets every sweep run's learning rate from it (scaling/lr_search.py)."""
    search = plan["lr_search"]
    for arch, entry in search["calibration"].items():
        losses = [_train_run(run, workdir, mesh_cfg, log, device_memory_gib)["final_eval_loss"]
                  for run in entry["runs"]]
        entry.update(losses=losses, chosen_lr=lr_search_lib.choose(entry, losses))
        log(f"lr search {arch}: " + ", ".join(f"{run['train']['learning_rate']:.3g} -> {loss}"
                                                for run, loss in zip(entry["runs"], losses))
            + f"; chosen {entry['chosen_lr']:.3g}")
    for run in plan["runs"]:
        entry = search["calibration"][run["arch"]]
        run["train"]["learning_rate"] = lr_search_lib.transferred(
            entry["chosen_lr"], entry["kaplan_lr"], run["active_params"] - (run["params"] - run["nonembed_params"]))
    search["applied"] = True
    write_plan(workdir, plan)


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


def fit_plan(plan: dict, mesh_cfg: MeshConfig, memory: int | None, log=print, devices=None) -> dict:
    """Each run's remat, microbatches and mesh chosen to fit `memory` bytes per device of `devices`
    (default: all; compile only, scaling/train/fitting.py), with its compiled memory per device;
    unchanged settings where the memory is unknown (a CPU: no remat, one microbatch). UsageError if a
    run cannot fit."""
    for run in all_runs(plan):
        fitted = fitting.fit(model_config_from_dict(run["model"]), TrainConfig(**run["train"]), mesh_cfg, memory,
                             name=f"run {run['run_id']}", devices=devices)
        run["model"]["remat"] = fitted.run.model_cfg.remat
        run["train"]["microbatches"] = fitted.run.train_cfg.microbatches
        run.update(mesh=dataclasses.asdict(fitted.mesh_cfg), gib_per_device=fitted.gib_per_device)
        if fitted.note:
            log(f"{run['run_id']}: {fitted.note}")
    return plan


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


def check_mesh(plan: dict, mesh_cfg: MeshConfig, devices=None) -> None:
    """UsageError unless every planned model and batch divides over the mesh of `devices` (default: all)."""
    mesh = sharding.make_mesh(mesh_cfg, devices)
    for run in plan["runs"]:
        model_cfg = model_config_from_dict(run["model"])
        get_architecture(model_cfg.arch).check_fits(mesh, model_cfg, run["train"]["batch_size"])


def _unfitted(plan: dict) -> dict:
    """The plan without what is filled in while it runs: the settings fitted to the devices (which may
    change when a sweep resumes elsewhere) and the learning-rate search's results."""
    plan = json.loads(json.dumps(plan))
    for run in all_runs(plan):
        run["model"].pop("remat")
        run["train"].pop("microbatches")
        run.pop("mesh", None)
        run.pop("gib_per_device", None)
    if "lr_search" in plan:
        for run in plan["runs"]:
            run["train"].pop("learning_rate")
        plan["lr_search"]["applied"] = None
        for entry in plan["lr_search"]["calibration"].values():
            entry.update(losses=None, chosen_lr=None)
    return plan


def check_workdir(workdir: str, plan: dict) -> None:
    """Refuses a `workdir` that already holds a sweep with a different plan (never mix or overwrite
    results); the settings fitted to the devices may differ."""
    path = epath.Path(workdir) / "plan.json"
    if path.exists():
        existing = json.loads(path.read_text())
        if existing.get("layout") != LAYOUT:
            raise UsageError("--workdir", f"{workdir} holds a sweep written by an earlier version of this toolkit "
                                          "(another parameter layout); choose a new --workdir")
        if _unfitted(existing) != _unfitted(plan):
            raise UsageError("--workdir", f"{workdir} holds a sweep with a different plan; re-run its original "
                                          "command to resume it, or choose a new --workdir")


def _write(workdir: str, name: str, content: str | bytes) -> None:
    """Writes <workdir>/<name> from process 0, the one writer of a sweep's shared files."""
    if jax.process_index() == 0:
        path = epath.Path(workdir) / name
        make_parent(path)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)


def write_plan(workdir: str, plan: dict) -> None:
    """Writes plan.json, the plan as this invocation runs it (`check_workdir` has vouched for an existing one)."""
    _write(workdir, "plan.json", json.dumps(plan, indent=2))


def result_record(run: dict, summary: dict) -> dict:
    """One results.jsonl line (the CONTRACT in DESIGN.md); a diverged run has null losses."""
    return {
        "run_id": run["run_id"],
        "arch": run["arch"],
        "budget": run["budget"],
        "params": run["params"],
        "nonembed_params": run["nonembed_params"],
        "active_params": run["active_params"],
        "flops_per_token": run["flops_per_token"],
        "tokens": summary["tokens"],
        "steps": summary["steps"],
        "epochs": summary.get("epochs"),  # absent from summaries written before it was recorded
        "seq_len": run["model"]["seq_len"],
        "batch_size": run["train"]["batch_size"],
        "remat": run["model"]["remat"],
        "microbatches": run["train"]["microbatches"],
        "seed": run["train"]["seed"],
        "learning_rate": run["train"]["learning_rate"],
        "final_train_loss": summary["final_train_loss"],
        "final_eval_loss": summary["final_eval_loss"],
        "final_eval_causal_loss": summary["final_eval_causal_loss"],
        "final_eval_bpb": summary["final_eval_bpb"],
        "status": summary["status"],
        "wall_s": summary["wall_s"],
        "flops_convention": CONVENTION,
        "data_fingerprint": summary["data_fingerprint"],
    }


def append_result(workdir: str, record: dict) -> None:
    """Appends one strict-JSON line (an interrupted sweep never leaves half a line)."""
    append_lines(epath.Path(workdir) / "results.jsonl", [strict_json(record)])


def _train_run(run: dict, workdir: str, mesh_cfg: MeshConfig, log, device_memory_gib) -> dict:
    """Trains (or resumes, or reads the summary of) one planned run on its fitted mesh."""
    run_mesh = MeshConfig(**run["mesh"]) if "mesh" in run else mesh_cfg
    summary = train(model_config_from_dict(run["model"]), TrainConfig(**run["train"]), run_mesh,
                    str(epath.Path(workdir) / "runs" / run["run_id"]), device_memory_gib=device_memory_gib,
                    cache_dir=default_cache_dir(workdir))
    if summary["status"] == "diverged":
        log(f"    {run['run_id']} diverged at step {summary['diverged']['step']}: {summary['diverged']['what']}")
    return summary


def run_sweep(plan: dict, workdir: str, mesh_cfg: MeshConfig, log=print, x_key: str = "params",
              device_memory_gib: float | None = None, metric: str = "final_eval_loss") -> dict:
    """Runs the learning-rate search if planned, then every planned run (finished ones are skipped,
    partial ones resume) on its fitted mesh, then fits and plots `metric` against `x_key` (params,
    nonembed_params or active_params); diverged runs are recorded and left out of the fits."""
    if "lr_search" in plan and not plan["lr_search"]["applied"]:
        apply_lr_search(plan, workdir, mesh_cfg, log, device_memory_gib)
    done = {r["run_id"] for r in finished_results(workdir)}
    for i, run in enumerate(plan["runs"]):
        if run["run_id"] in done:
            log(f"[{i + 1}/{len(plan['runs'])}] {run['run_id']}: finished earlier, skipped")
            continue
        log(f"[{i + 1}/{len(plan['runs'])}] {run['run_id']}: {run['tokens']:.3g} tokens, {run['steps']} steps")
        summary = _train_run(run, workdir, mesh_cfg, log, device_memory_gib)
        if jax.process_index() == 0:
            append_result(workdir, result_record(run, summary))
        if summary["status"] == "complete":
            log(f"    final eval loss {summary['final_eval_loss']:.4f} in {format_duration(summary['wall_s'])}")
    return finish(workdir, x_key, metric)


def finished_results(workdir: str) -> list[dict]:
    """The results.jsonl records written so far (none before the first run finishes)."""
    return analysis.load_results(workdir) if (epath.Path(workdir) / "results.jsonl").exists() else []


def finish(workdir: str, x_key: str = "params", metric: str = "final_eval_loss") -> dict:
    """Fits a parabola of `metric` in log `x_key` per architecture and budget (seeds averaged, diverged
    runs left out), with bootstrap intervals and, over several budgets, the N_opt and D_opt power laws;
    writes fits.json and isoflop.png, returns the fits."""
    results = finished_results(workdir)
    fits = analysis.fit_sweep(results, x_key, metric=metric)
    if jax.process_index() == 0:
        _write(workdir, "fits.json", json.dumps(fits, indent=2))
        image = io.BytesIO()
        analysis.plot_isoflop(results, fits, image, x_key, metric=metric)
        _write(workdir, "isoflop.png", image.getvalue())
        print(analysis.format_table(results, fits, metric=metric))
    return fits
