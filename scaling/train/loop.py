"""The training loop: the only place with side effects (data, logging, evaluation, checkpoints).

A run directory holds config.json, metrics.jsonl, checkpoints/ and, once finished, summary.json.
Re-running with the same configuration resumes from the latest checkpoint; the batch at step s is
a pure function of (seed, s), so a resumed run reads exactly what the uninterrupted one would have.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Callable

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint
from tqdm import tqdm

from scaling import data, sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.flops import CONVENTION
from scaling.train import checkpoints, fitting
from scaling.train.metrics import MetricsLog, throughput
from scaling.train.run import Run
from scaling.train.steps import Loss

EVAL_SEED = 1234
# Version of the parameter and config layout; runs written by another layout are refused, not mixed.
LAYOUT = 2


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
        "data_fingerprint": data.fingerprint(run.train_cfg.data),
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
FITTED = {"model": ("remat",), "train": ("microbatches",)}


def _comparable(config: dict) -> dict:
    kept = {key: value for key, value in config.items() if key not in ("versions", "mesh", "memory")}
    for part, fields in FITTED.items():
        kept[part] = {key: value for key, value in kept[part].items() if key not in fields}
    return kept


def read_config(run_dir: str) -> dict | None:
    """config.json of a run directory (None if there is none); a run of another layout is refused."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        config = json.load(f)
    if config.get("layout") != LAYOUT:
        raise UsageError("--workdir", f"{run_dir} was written by an earlier version of this toolkit (another "
                                      "parameter layout) and cannot be resumed; choose a new --workdir")
    return config


def _check_config(run_dir: str, config: dict) -> None:
    """Refuses to mix results with a different run already in `run_dir`.

    The mesh and the fitted settings may differ between a run and its resumption (checkpoints
    restore onto any layout).
    """
    existing = read_config(run_dir)
    if existing is not None and _comparable(existing) != _comparable(json.loads(json.dumps(config))):
        raise UsageError("--workdir", f"{run_dir} holds a run with a different configuration; choose a new --workdir")


def _write_config(run_dir: str, config: dict) -> None:
    """Writes config.json as this invocation runs it (mesh and fitted settings included)."""
    if jax.process_index() == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({**config, "versions": _versions()}, f, indent=2)


def _mean_metrics(pending: list[dict]) -> dict:
    """Host-side means of the per-step metric dicts gathered since the last log."""
    fetched = jax.device_get(pending)
    return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


class Evaluator:
    """Mean LM loss over a fixed set of held-out batches (the same batches at every evaluation)."""

    def __init__(self, run: Run):
        loader = run.loader("eval", seed=EVAL_SEED)
        self.batches = [loader(i) for i in range(run.train_cfg.eval_batches)]
        self.step = run.eval_step()
        self.mesh = run.mesh

    def __call__(self, params) -> float:
        with sharding.activate(self.mesh):
            sums = [self.step(params, batch) for batch in self.batches]
        total, count = np.sum(jax.device_get(sums), axis=0)
        return float(total / max(count, 1.0))


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    mesh_cfg: MeshConfig,
    run_dir: str,
    *,
    max_steps: int | None = None,
    loss: Loss | None = None,
    init_from: Callable | None = None,
    extra_config: dict | None = None,
    device_memory_gib: float | None = None,
) -> dict:
    """Trains (or resumes) one run to `train_cfg.tokens`, or stops after `max_steps` with a checkpoint.

    `loss` (default: the LM loss) is what the optimizer minimises; `init_from` (optional) maps the
    model's fresh parameters to a new run's initial ones (a distilled student's copied weights);
    `extra_config` is recorded in config.json (and
    must match on resumption), e.g. a distillation's teacher. Remat and microbatches left to fit are
    chosen for the device memory (`device_memory_gib`, else what the device reports; see
    scaling/train/fitting.py). Returns the summary (also written to summary.json once the run is
    complete); a complete run with the same configuration is not trained again.
    """
    _check_config(run_dir, run_config(Run(model_cfg, train_cfg, sharding.make_mesh(mesh_cfg), loss=loss), mesh_cfg,
                                      extra_config))
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            return json.load(f)
    fitted = fitting.fit(model_cfg, train_cfg, mesh_cfg, fitting.device_memory(device_memory_gib),
                         name=f"run {os.path.basename(os.path.normpath(run_dir))}", loss=loss)
    run = fitted.run
    config = {**run_config(run, fitted.mesh_cfg, extra_config),
              "memory": {"gib_per_device": fitted.gib_per_device, "note": fitted.note}}
    _write_config(run_dir, config)

    stop_step = run.total_steps if max_steps is None else min(max_steps, run.total_steps)
    mngr = checkpoints.manager(run_dir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    state = run.restore(mngr)
    if state is None:
        state = run.init_state(init_from)
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"))
    history = log.truncate_after(int(state.step))
    wall_offset = history[-1]["wall_s"] if history else 0.0
    start_time = time.perf_counter()
    last = _loop(run, state, mngr, log, config["counts"]["flops_per_token"], stop_step, wall_offset)
    summary = {
        "steps": stop_step,
        "complete": stop_step == run.total_steps,
        "tokens": stop_step * train_cfg.batch_size * model_cfg.seq_len,
        "final_train_loss": last["loss"],
        "final_eval_loss": last["eval_loss"],
        "wall_s": wall_offset + time.perf_counter() - start_time,
        **config["counts"],
    }
    if summary["complete"] and jax.process_index() == 0:
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _loop(run: Run, state, mngr, log: MetricsLog, flops_per_token: float, stop_step: int, wall_offset: float):
    """Steps from the restored step to `stop_step`, logging, evaluating and checkpointing on schedule.

    The step is compiled ahead of time, so the first interval's throughput excludes compilation.
    Returns the last logged {"loss", "eval_loss"}.
    """
    train_cfg, total_steps = run.train_cfg, run.total_steps
    eval_every = train_cfg.eval_every or max(1, total_steps // 10)
    log_every = max(1, min(train_cfg.log_every, total_steps))
    tokens_per_step = train_cfg.batch_size * run.model_cfg.seq_len
    loader, evaluate, frozen = run.loader(), Evaluator(run), run.loss.frozen
    step_fn = run.compiled_train_step
    start_step = int(state.step)
    start_time = interval_start = time.perf_counter()
    pending, last = [], {"loss": float("nan"), "eval_loss": None}
    show = sys.stderr.isatty() and jax.process_index() == 0
    bar = tqdm(total=stop_step, initial=start_step, disable=not show, unit="step", dynamic_ncols=True)
    with sharding.activate(run.mesh):
        for step in range(start_step, stop_step):
            state, metrics = step_fn(state, loader(step), frozen)
            pending.append(metrics)
            done = step + 1
            is_eval = done % eval_every == 0 or done == total_steps
            if done % log_every == 0 or is_eval or done == stop_step:
                means = _mean_metrics(pending)  # blocks until the interval's steps are done
                now = time.perf_counter()
                record = {
                    **means,
                    **throughput(flops_per_token, len(pending) * tokens_per_step, now - interval_start, run.mesh.size),
                    "step": done,
                    "tokens": done * tokens_per_step,
                    "flops": done * tokens_per_step * flops_per_token,
                    "lr": float(run.schedule(step)),
                    "eval_loss": evaluate(state.params) if is_eval else None,
                    "wall_s": wall_offset + now - start_time,
                }
                log.write(record)
                last.update(loss=record["loss"], eval_loss=record["eval_loss"] or last["eval_loss"])
                bar.set_postfix(loss=f"{record['loss']:.3f}", eval=f"{last['eval_loss'] or float('nan'):.3f}")
                pending, interval_start = [], time.perf_counter()
            checkpoints.save(mngr, done, state, force=done == stop_step)
            bar.update(1)
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    return last
