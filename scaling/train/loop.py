"""The training loop: the only place with side effects (data, logging, evaluation, checkpoints).

A run directory (a local path or any etils.epath one, e.g. gs://bucket/run) holds config.json,
metrics.jsonl (strict JSON: null for a non-finite value), checkpoints/ and, once the run ends,
summary.json with its status: complete, or diverged (a non-finite loss or gradient norm stops the
run at once; no non-finite state is ever checkpointed). SIGTERM saves the current step and stops
(scaling/train/preemption.py). Re-running with the same configuration resumes from the latest
checkpoint; the batch at step s is a pure function of (seed, s), so a resumed run reads exactly
what the uninterrupted one would have.
"""
import json
import math
import os
import sys
import time
from typing import Callable

import jax
import numpy as np
from etils import epath
from tqdm import tqdm

from scaling import hardware, sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig
from scaling.train import checkpoints, fitting
from scaling.train.evaluation import Evaluator
from scaling.train.metrics import MetricsLog, progress_line, throughput
from scaling.train.preemption import Preempted, PreemptionWatch
from scaling.train.run import Run
from scaling.train.run_dir import check_config, default_cache_dir, run_config, write_config, write_json
from scaling.train.steps import Loss

USEFUL_EPOCHS = 4  # repeats of the training data a run may read without a warning (_warn_of_repeats)


class Diverged(Exception):
    """A non-finite loss or gradient norm at `step`; the run stops there."""

    def __init__(self, step: int, what: str):
        super().__init__(f"diverged at step {step}: {what}")
        self.step, self.what = step, what


def _interval_means(steps: list[int], pending: list[dict]) -> dict:
    """Host-side means of the per-step metrics since the last log; Diverged at the first step whose
    loss or gradient norm is not finite."""
    fetched = jax.device_get(pending)
    for step, metrics in zip(steps, fetched):
        for name in ("loss", "grad_norm"):
            if not math.isfinite(float(metrics[name])):
                raise Diverged(step, f"{name} {float(metrics[name])}")
    return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


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
    cache_dir: str | None = None,
) -> dict:
    """Trains (or resumes) one run to `train_cfg.tokens`, or stops after `max_steps` with a checkpoint.

    `loss` (default: the LM loss) is what the optimizer minimises; `init_from` (optional) maps the
    model's fresh parameters to a new run's initial ones (a distilled student's copied weights);
    `extra_config` is recorded in config.json (and must match on resumption), e.g. a distillation's
    teacher. Remat and microbatches left to fit are chosen for the device memory (`device_memory_gib`,
    else what the device reports; see scaling/train/fitting.py). `cache_dir` keeps trained tokenizers
    and tokenised data (default: <run_dir>/data, or ~/.cache/scaling for a remote run_dir, since the
    token arrays are memory-mapped). Returns the summary, written to
    summary.json once the run ends (status complete or diverged); an ended run with the same
    configuration is not trained again. Raises Preempted after saving on SIGTERM.
    """
    name = os.path.basename(os.path.normpath(str(run_dir)))
    cache_dir = cache_dir or default_cache_dir(run_dir)
    base = Run(model_cfg, train_cfg, sharding.make_mesh(mesh_cfg), loss=loss, cache_dir=cache_dir)
    check_config(run_dir, run_config(base, mesh_cfg, extra_config))
    summary_path = epath.Path(run_dir) / "summary.json"
    if summary_path.exists():
        return _with_causal_loss(json.loads(summary_path.read_text()), model_cfg)
    base.check_data()
    epochs_per_step = base.epochs_per_step()
    _warn_of_repeats(name, train_cfg.data, base.total_steps * epochs_per_step)
    fitted = fitting.fit(model_cfg, train_cfg, mesh_cfg, fitting.device_memory(device_memory_gib),
                         name=f"run {name}", loss=loss, cache_dir=cache_dir)
    run = fitted.run
    config = {**run_config(run, fitted.mesh_cfg, extra_config), "data_cache": str(cache_dir),
              "hardware": hardware.describe_devices(),
              "memory": {"gib_per_device": fitted.gib_per_device, "note": fitted.note}}
    write_config(run_dir, config)

    stop_step = run.total_steps if max_steps is None else min(max_steps, run.total_steps)
    mngr = checkpoints.manager(run_dir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    state = run.restore(mngr)
    if state is None:
        state = run.init_state(init_from)
    log = MetricsLog(epath.Path(run_dir) / "metrics.jsonl")
    history = log.truncate_after(int(state.step))
    loop = _Loop(run, mngr, log, config["counts"]["flops_per_token"], history[-1]["wall_s"] if history else 0.0)
    diverged = None
    try:
        with PreemptionWatch() as watch:
            loop.train(state, stop_step, watch, name)
    except Diverged as error:
        diverged = {"step": error.step, "what": error.what, "last_checkpoint": mngr.latest_step()}
    finally:
        log.flush()
        mngr.wait_until_finished()
        mngr.close()
    steps = diverged["step"] if diverged else stop_step
    summary = _summary(loop, config, steps, steps * epochs_per_step, diverged,
                       complete=not diverged and stop_step == run.total_steps)
    if summary["complete"] or diverged:
        write_json(summary_path, summary)
    return summary


def _summary(loop: "_Loop", config: dict, steps: int, epochs: float, diverged: dict | None, complete: bool) -> dict:
    """summary.json: the status, what the run read, its final losses (None once it diverged), its counts
    and data."""
    final = {} if diverged else loop.last
    return {
        "status": "diverged" if diverged else "complete",
        "steps": steps,
        "complete": complete,
        "tokens": steps * loop.tokens_per_step,
        "epochs": epochs,
        "final_train_loss": final.get("loss"),
        "final_eval_loss": final.get("eval_loss"),
        # the eval pass uses no later token unless the training pass looks ahead
        "final_eval_causal_loss": final.get("eval_causal_loss", final.get("eval_loss")),
        "final_eval_bpb": None if diverged else loop.evaluate.bits_per_byte(final["eval_loss"]),
        "wall_s": loop.wall_s,
        **config["counts"],
        "data_fingerprint": config["data_fingerprint"],
        **({"diverged": diverged} if diverged else {}),
    }


def _warn_of_repeats(name: str, data_name: str, epochs: float) -> None:
    """One line when a run reads its training data more than USEFUL_EPOCHS times: past that, repeated
    tokens are worth much less than new ones (Muennighoff et al. 2023, Scaling Data-Constrained
    Language Models), so the loss is not the one the same compute reaches on more data."""
    if epochs > USEFUL_EPOCHS and jax.process_index() == 0:
        print(f"WARNING: run {name} reads the training split of --data {data_name} {epochs:.1f} times; "
              f"past ~{USEFUL_EPOCHS} epochs repeated tokens are worth much less than new ones, so its loss is not "
              "what this compute reaches on more data: use more (a larger corpus, --data tfds:NAME, or a larger "
              "--data_tokens)", file=sys.stderr)


def _with_causal_loss(summary: dict, model_cfg: ModelConfig) -> dict:
    """A summary written before final_eval_causal_loss was recorded, with it: the eval loss where the
    training pass looks at no later token, else unknown (None)."""
    known = None if model_cfg.options.looks_ahead else summary["final_eval_loss"]
    return {"final_eval_causal_loss": known, **summary}


class _Loop:
    """Steps a run, logging, evaluating and checkpointing on schedule (the step compiled ahead of time,
    so the first interval's throughput excludes compilation). Metrics are fetched, and checked for
    divergence, at every log, eval and checkpoint step, so a checkpoint only ever holds finite state."""

    def __init__(self, run: Run, mngr, log: MetricsLog, flops_per_token: float, wall_offset: float):
        self.run, self.mngr, self.log, self.flops_per_token = run, mngr, log, flops_per_token
        self.wall_offset = self.wall_s = wall_offset
        cfg = run.train_cfg
        self.eval_every = cfg.eval_every or max(1, run.total_steps // 10)
        self.log_every = max(1, min(cfg.log_every, run.total_steps))
        self.tokens_per_step = cfg.batch_size * run.model_cfg.seq_len
        self.evaluate = Evaluator(run)
        self.last = {"loss": float("nan"), "eval_loss": None}

    def train(self, state, stop_step: int, watch: PreemptionWatch, name: str) -> None:
        run, loader, frozen = self.run, self.run.loader(), self.run.loss.frozen
        step_fn = run.compiled_train_step
        start_step, start_time = int(state.step), time.perf_counter()
        self.interval_start, steps, pending = start_time, [], []
        terminal = sys.stderr.isatty()
        bar = tqdm(total=stop_step, initial=start_step, disable=not (terminal and jax.process_index() == 0),
                   unit="step", dynamic_ncols=True)
        with sharding.activate(run.mesh):
            for step in range(start_step, stop_step):
                state, metrics = step_fn(state, loader(step), frozen)
                done = step + 1
                steps.append(done)
                pending.append(metrics)
                stopping = watch.reached(done, self.mngr)
                is_eval = done % self.eval_every == 0 or done == run.total_steps
                saving = stopping or done == stop_step or self.mngr.should_save(done)
                if done % self.log_every == 0 or is_eval or saving:
                    record = self._record(state, steps, pending, is_eval, start_time)
                    bar.set_postfix(loss=f"{self.last['loss']:.3f}", eval=f"{self.last['eval_loss'] or math.nan:.3f}")
                    if is_eval and not terminal and jax.process_index() == 0:
                        left = (stop_step - done) * (time.perf_counter() - start_time) / (done - start_step)
                        print(progress_line(name, record, stop_step, left), file=sys.stderr, flush=True)
                    steps, pending = [], []
                if saving:
                    self.log.flush()
                    checkpoints.save(self.mngr, done, state, force=True)
                bar.update(1)
                if stopping:
                    raise Preempted(name, done)
        bar.close()

    def _record(self, state, steps, pending, is_eval: bool, start_time: float) -> dict:
        """Logs one interval's means (blocking until its steps are done), with an eval if due."""
        done = steps[-1]
        means = _interval_means(steps, pending)
        now = time.perf_counter()
        record = {
            **means,
            **throughput(self.flops_per_token, len(pending) * self.tokens_per_step, now - self.interval_start,
                         self.run.mesh.size),
            "step": done,
            "tokens": done * self.tokens_per_step,
            "flops": done * self.tokens_per_step * self.flops_per_token,
            "lr": float(self.run.schedule(done - 1)),
            **(self.evaluate(state.params) if is_eval else dict.fromkeys(self.evaluate.steps)),
            "wall_s": self.wall_offset + now - start_time,
        }
        record["eval_bpb"] = self.evaluate.bits_per_byte(record["eval_loss"])
        self.log.write(record)
        self.last.update(loss=record["loss"], **{name: record[name] for name in self.evaluate.steps if is_eval})
        self.wall_s, self.interval_start = record["wall_s"], time.perf_counter()
        return record
