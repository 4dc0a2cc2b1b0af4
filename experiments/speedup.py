"""Speedup versus steps: python -m experiments.speedup --baseline gpt --variant ngpt --tokens N --workdir DIR.

Trains the baseline and the variant on the same data, token budget, mesh and eval batches, with
frequent evals; with --lr_sweep (the default) each side trains once per learning rate of the same
grid and the best of each (lowest final eval loss) is compared. --metric eval_causal_loss compares
the loss of the pass sampling takes instead (it differs only where training routes a token by later
ones: mod, staged mode; the other side's eval loss is that already). Writes <workdir>/curves.json (both
curves, speedup vs steps and vs wall time = steps x the step time measured side by side, the sweep) and speedup.png.
Every run lives in <workdir>/runs/<arch>[-<name>=<value>...]-lr<lr>[-seed<seed>]/; re-running the same
command resumes. The model is given as for experiments.train (--size or --d_model ...); --arch is
refused (the sides are --baseline and --variant), as is --learning_rate without --nolr_sweep.
--baseline_options and --variant_options set model flags for one side only (the sides may then be one
architecture: an ablation), e.g. --baseline switch --baseline_options capacity_factor=0.625 --variant
mode --variant_options mode_variant=integrated,noop_experts=8.
"""
import io
import json
import math
import os

import jax
import numpy as np
from absl import flags
from etils import epath

from experiments import cli
from scaling import analysis, benchmark, sharding
from scaling.config import MeshConfig, TrainConfig, UsageError
from scaling.models.registry import ARCHITECTURES, model_config_from_dict
from scaling.train import fitting
from scaling.train.loop import train
from scaling.train.run import Run
from scaling.train.run_dir import read_config, write_file

flags.DEFINE_string("baseline", "gpt", "Architecture of the control.")
flags.DEFINE_string("variant", "ngpt", "Architecture compared against the baseline.")
flags.DEFINE_string("baseline_options", "", "Model flags of the baseline only, as name=value pairs separated by "
                                            "commas (e.g. capacity_factor=0.625); they replace the shared flags.")
flags.DEFINE_string("variant_options", "", "Model flags of the variant only, as --baseline_options.")
flags.DEFINE_bool("lr_sweep", True, "Sweep --sweep_lrs for both sides and compare the best of each "
                                    "(--nolr_sweep: both use --learning_rate).")
flags.DEFINE_string("sweep_lrs", "1e-3,3e-3,1e-2,3e-2", "Comma-separated peak learning rates, the same for both sides.")
flags.DEFINE_integer("seeds", 1, "Train each side at each learning rate with this many seeds (--seed, --seed + 1, "
                                 "...: initialisation and data order, shared by the sides); the mean curves are "
                                 "compared, and the report gives each side's spread and the difference per seed.")
flags.DEFINE_enum("metric", "eval_loss", ["eval_loss", "eval_causal_loss"],
                  "The eval loss compared: of the training pass, or of the pass sampling takes.")
flags.DEFINE_float("smooth", 0.2, "EMA weight smoothing both eval-loss curves before matching (then running min).")
flags.DEFINE_integer("timing_rounds", 3, "Rounds of 5 timed steps per model, the models alternating (median of each).")
cli.define_model_flags()
cli.define_train_flags()
cli.define_common_flags()
FLAGS = flags.FLAGS
MIN_EVALS = 5
EVALS_PER_RUN = 25
SIDES = ("baseline", "variant")


def side_models() -> dict[str, tuple[str, dict]]:
    """{side: (architecture, its --<side>_options)}, the architectures registered (the sides share the data:
    not seq_len)."""
    if cli.given("arch"):
        raise UsageError("--arch", "is not used: the sides' architectures are --baseline and --variant")
    for side in SIDES:
        if FLAGS[side].value not in ARCHITECTURES:
            raise UsageError(f"--{side}", f"unknown architecture {FLAGS[side].value!r}; "
                                          f"choose from {', '.join(ARCHITECTURES)}")
    models = {side: (FLAGS[side].value, cli.model_overrides(f"{side}_options", FLAGS[side].value)) for side in SIDES}
    for side, (_, options) in models.items():
        if "seq_len" in options:
            raise UsageError(f"--{side}_options", "seq_len is the data's, the same for both sides: set --seq_len")
    return models


def label(arch: str, options: dict) -> str:
    """The name of one side in reports: the architecture, with its own options."""
    return arch + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def learning_rates() -> list[float]:
    """The sweep grid (sorted, distinct), or [--learning_rate] with --nolr_sweep; the flag of the other
    way is refused rather than ignored."""
    unused = "learning_rate" if FLAGS.lr_sweep else "sweep_lrs"
    if cli.given(unused):
        needs = "--nolr_sweep" if FLAGS.lr_sweep else "--lr_sweep"
        raise UsageError(f"--{unused}", f"is used only with {needs}; add {needs}, or drop --{unused}")
    if not FLAGS.lr_sweep:
        return [FLAGS.learning_rate]
    try:
        lrs = sorted({float(x) for x in FLAGS.sweep_lrs.split(",") if x.strip()})
    except ValueError:
        lrs = []
    if not lrs or not all(math.isfinite(lr) and lr > 0 for lr in lrs):
        raise UsageError("--sweep_lrs", f"{FLAGS.sweep_lrs!r} must be a non-empty list of positive numbers, "
                                        "e.g. 1e-3,3e-3,1e-2")
    return lrs


def seeds() -> list[int]:
    """--seed, --seed + 1, ... (--seeds of them)."""
    if FLAGS.seeds < 1:
        raise UsageError("--seeds", f"must be at least 1, got {FLAGS.seeds}")
    return [FLAGS.seed + i for i in range(FLAGS.seeds)]


def plan_runs(models, lrs, mesh_cfg) -> dict[str, list[tuple]]:
    """{side: [(model_cfg, train_cfg)] per learning rate and seed}, every config validated before anything
    runs."""
    model_cfgs = {side: cli.model_config(arch, options) for side, (arch, options) in models.items()}
    if model_cfgs["baseline"] == model_cfgs["variant"]:
        raise UsageError("--variant", f"gives the baseline's model ({FLAGS.baseline}); compare two architectures, "
                                      "or set options of one side (--variant_options)")
    seq_len = model_cfgs["baseline"].seq_len
    steps = cli.train_config().validate(seq_len).steps(seq_len)
    eval_every = FLAGS.eval_every or max(1, steps // EVALS_PER_RUN)
    if steps // eval_every < MIN_EVALS:
        raise UsageError("--tokens", f"{steps} steps give {steps // eval_every} evals at --eval_every={eval_every}; "
                                     f"raise --tokens or lower --eval_every to get at least {MIN_EVALS}")
    mesh = sharding.make_mesh(mesh_cfg)
    runs = {}
    for side, model_cfg in model_cfgs.items():
        ARCHITECTURES[model_cfg.arch].check_fits(mesh, model_cfg, FLAGS.batch_size)
        runs[side] = [(model_cfg, cli.train_config(learning_rate=lr, eval_every=eval_every, seed=seed)
                       .validate(model_cfg.seq_len)) for lr in lrs for seed in seeds()]
    return runs


def _finite(loss: float | None) -> float:
    """A final loss, infinite where the run diverged (or, for a causal loss, ended before the toolkit
    recorded it)."""
    return loss if loss is not None and math.isfinite(loss) else math.inf


def run_name(arch: str, options: dict, train_cfg) -> str:
    """<arch>[-<name>=<value>...]-lr<lr>, with -seed<seed> for seeds other than 0."""
    return "-".join([arch, *(f"{k}={v}" for k, v in options.items()), f"lr{train_cfg.learning_rate:g}"]) + (
        f"-seed{train_cfg.seed}" if train_cfg.seed else "")


def run_side(runs, options, workdir, mesh_cfg, memory_gib) -> dict:
    """Trains (or resumes) every learning rate and seed of one side (its model flags `options` beside the
    shared ones); returns the best learning rate (the lowest mean final loss over the seeds) with its
    runs, and the sweep of mean losses.

    "best_at_grid_edge" flags a best learning rate at either end of a sweep: widen the grid.
    """
    by_lr = {}
    for model_cfg, train_cfg in runs:
        run_dir = os.path.join(workdir, "runs", run_name(model_cfg.arch, options, train_cfg))
        summary = train(model_cfg, train_cfg, mesh_cfg, run_dir, device_memory_gib=memory_gib)
        losses = {f"final_{key}": _finite(summary[f"final_{key}"]) for key in ("eval_loss", "eval_causal_loss")}
        by_lr.setdefault(train_cfg.learning_rate, []).append({"seed": train_cfg.seed, "run_dir": run_dir, **losses})
    mean = lambda rows, key: float(np.mean([row[key] for row in rows]))
    sweep = {f"{lr:g}": mean(rows, f"final_{FLAGS.metric}") for lr, rows in by_lr.items()}
    best_lr = min(by_lr, key=lambda lr: sweep[f"{lr:g}"])
    rows, model_cfg = by_lr[best_lr], runs[0][0]
    edge = len(by_lr) > 1 and best_lr in (min(by_lr), max(by_lr))
    return {"arch": model_cfg.arch, "options": options, "label": label(model_cfg.arch, options),
            "learning_rate": best_lr, "run_dir": rows[0]["run_dir"],
            **{key: mean(rows, key) for key in ("final_eval_loss", "final_eval_causal_loss")}, "seeds": rows,
            "params": ARCHITECTURES[model_cfg.arch].counts(model_cfg).params, "sweep": sweep,
            "best_at_grid_edge": edge}


def as_trained(run_dir: str) -> fitting.Fit:
    """A run directory's run with the remat, microbatches and mesh it last trained with (config.json):
    the program it trained with, loaded from the compilation cache."""
    config = read_config(run_dir)
    mesh_cfg = MeshConfig(**config["mesh"])
    run = Run(model_config_from_dict(config["model"]), TrainConfig(**config["train"]), sharding.make_mesh(mesh_cfg))
    return fitting.Fit(run, mesh_cfg, None)


def step_times(run_dirs: list[str]) -> list[dict]:
    """Each run as it trained, timed side by side (alternating steps) in this process: its median
    train-step seconds, and the remat and microbatches of the step timed."""
    timed = benchmark.time_fits([as_trained(run_dir) for run_dir in run_dirs], steps=5 * FLAGS.timing_rounds)
    return [{key: t[key] for key in ("step_s", "remat", "microbatches")} for t in timed]


def report(base, var) -> dict:
    """The curves.json content: setup, both sides, step times, and the speedup curves with summaries.

    Wall time is steps x the step time of each side's best run, measured side by side here (steady
    state: no compilation, no evals, and the same machine load for both), not the runs' own clocks,
    which other jobs disturb.
    """
    (bx, by), (vx, vy) = (analysis.mean_eval_curve([analysis.load_metrics(run["run_dir"]) for run in side["seeds"]],
                                                   loss_key=FLAGS.metric) for side in (base, var))
    base_timed, var_timed = step_times([base["run_dir"], var["run_dir"]])
    base_s, var_s = base_timed.pop("step_s"), var_timed.pop("step_s")
    curves = {"steps": analysis.speedup_curve(bx, by, vx, vy, smooth=FLAGS.smooth),
              "wall": analysis.speedup_curve(bx * base_s, by, vx * var_s, vy, smooth=FLAGS.smooth)}
    train_cfg = cli.train_config()
    seq_len = FLAGS.seq_len
    steps = train_cfg.steps(seq_len)
    return {
        "setup": {"tokens": train_cfg.tokens, "batch_size": train_cfg.batch_size, "seq_len": seq_len, "steps": steps,
                  "eval_every": FLAGS.eval_every or max(1, steps // EVALS_PER_RUN), "eval_batches": FLAGS.eval_batches,
                  "data": FLAGS.data, "mesh": FLAGS.mesh, "smooth": FLAGS.smooth, "devices": jax.device_count(),
                  "metric": FLAGS.metric, "seeds": seeds()},
        "baseline": base,
        "variant": var,
        "per_step_time": {"baseline_s": base_s, "variant_s": var_s, "overhead": var_s / base_s - 1.0,
                          "timed": {"baseline": base_timed, "variant": var_timed}},
        "difference": paired_difference(base["seeds"], var["seeds"]),
        **curves,
        "summary": {key: analysis.summarize_speedup(curves[key]) for key in ("steps", "wall")},
    }


def paired_difference(base_seeds: list[dict], var_seeds: list[dict]) -> dict:
    """Variant minus baseline final loss (--metric) per seed (the same initialisation seed and data order
    on both sides), with its mean and sample standard deviation."""
    key = f"final_{FLAGS.metric}"
    per_seed = [v[key] - b[key] for b, v in zip(base_seeds, var_seeds)]
    return {"metric": key, "seeds": [b["seed"] for b in base_seeds], "per_seed": per_seed,
            "mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None}


def main(argv) -> None:
    del argv
    models = side_models()
    lrs = learning_rates()
    mesh_cfg, memory_gib = cli.mesh_config(), cli.device_memory_gib()
    runs = plan_runs(models, lrs, mesh_cfg)
    probe = runs["baseline"][0][0]
    arch_pair = "-".join(arch for arch, _ in models.values())
    workdir = FLAGS.workdir or f"runs/speedup-{arch_pair}-T{probe.seq_len}"
    cli.keep_compiled(workdir)
    base, var = (run_side(runs[side], models[side][1], workdir, mesh_cfg, memory_gib) for side in SIDES)
    result = report(base, var)
    if jax.process_index() == 0:
        write_file(epath.Path(workdir) / "curves.json", json.dumps(result, indent=1))
        image = io.BytesIO()
        analysis.plot_speedup_report(result, image)
        write_file(epath.Path(workdir) / "speedup.png", image.getvalue())
        print(analysis.format_speedup_report(result))
        print(f"wrote {workdir}/curves.json and speedup.png")


if __name__ == "__main__":
    cli.run(main)
