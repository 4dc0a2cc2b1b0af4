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

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint
from tqdm import tqdm

from scaling import data, sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.flops import CONVENTION
from scaling.models.registry import get_architecture
from scaling.train import checkpoints
from scaling.train.metrics import MetricsLog, throughput
from scaling.train.state import abstract_state, create_state
from scaling.train.steps import jit_train_step, make_eval_step

EVAL_SEED = 1234


def run_config(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh_cfg: MeshConfig) -> dict:
    """Everything that determines a run's results, as recorded in config.json."""
    counts = get_architecture(model_cfg.arch).counts(model_cfg)
    return {
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(train_cfg),
        "mesh": dataclasses.asdict(mesh_cfg),
        "counts": dataclasses.asdict(counts),
        "flops_convention": CONVENTION,
        "data_fingerprint": data.fingerprint(train_cfg.data),
    }


def _versions() -> dict:
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": orbax.checkpoint.__version__,
        "python": sys.version.split()[0],
    }


def _comparable(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in ("versions", "mesh")}


def _write_config(run_dir: str, config: dict) -> None:
    """Writes config.json, or refuses to mix results with a different run already in `run_dir`.

    The mesh may differ between a run and its resumption (checkpoints restore onto any layout).
    """
    path = os.path.join(run_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            existing = json.load(f)
        if _comparable(existing) != _comparable(json.loads(json.dumps(config))):
            raise UsageError(
                "--workdir", f"{run_dir} holds a run with a different configuration; choose a new --workdir"
            )
        return
    if jax.process_index() == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({**config, "versions": _versions()}, f, indent=2)


def _mean_metrics(pending: list[dict]) -> dict:
    """Host-side means of the per-step metric dicts gathered since the last log."""
    fetched = jax.device_get(pending)
    return {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}


class Evaluator:
    """Mean LM loss over a fixed set of held-out batches (the same batches at every evaluation)."""

    def __init__(self, model, model_cfg, train_cfg, mesh, param_shardings):
        source = data.make_source(train_cfg.data, "eval", model_cfg.seq_len)
        loader = data.BatchLoader(
            source, global_batch_size=train_cfg.batch_size, seed=EVAL_SEED, sharding=sharding.batch_sharding(mesh)
        )
        self.batches = [loader(i) for i in range(train_cfg.eval_batches)]
        self.step = jax.jit(make_eval_step(model), in_shardings=(param_shardings, sharding.batch_sharding(mesh)))
        self.mesh = mesh

    def __call__(self, params) -> float:
        with sharding.activate(self.mesh):
            sums = [self.step(params, batch) for batch in self.batches]
        total, count = np.sum(jax.device_get(sums), axis=0)
        return float(total / max(count, 1.0))


@dataclasses.dataclass
class _Run:
    """Everything the loop needs, built once: the jitted step, data, evaluation, logging, checkpoints."""

    state: object
    step_fn: object
    schedule: object
    loader: data.BatchLoader
    evaluate: Evaluator
    mngr: object
    log: MetricsLog
    mesh: object
    wall_offset: float


def _build(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh, run_dir: str, total_steps: int) -> _Run:
    """Restores the latest checkpoint (or initialises), and compiles the train step ahead of time."""
    arch = get_architecture(model_cfg.arch)
    model = arch.model(model_cfg)
    tx, schedule = arch.optimizer(train_cfg, total_steps)
    abstract, shardings = abstract_state(model, tx, model_cfg, train_cfg.seed, mesh)
    mngr = checkpoints.manager(run_dir, train_cfg.keep_checkpoints, train_cfg.checkpoint_every)
    state = checkpoints.restore_latest(mngr, abstract)
    if state is None:
        state = create_state(model, tx, model_cfg, train_cfg.seed, mesh, arch.post_step)
    log = MetricsLog(os.path.join(run_dir, "metrics.jsonl"))
    history = log.truncate_after(int(state.step))
    loader = data.BatchLoader(
        data.make_source(train_cfg.data, "train", model_cfg.seq_len),
        global_batch_size=train_cfg.batch_size,
        seed=train_cfg.seed,
        sharding=sharding.batch_sharding(mesh),
    )
    with sharding.activate(mesh):
        step_fn = jit_train_step(model, tx, train_cfg.seed, arch.post_step, shardings, mesh)
        step_fn = step_fn.lower(state, loader(int(state.step))).compile()
    return _Run(
        state=state,
        step_fn=step_fn,
        schedule=schedule,
        loader=loader,
        evaluate=Evaluator(model, model_cfg, train_cfg, mesh, shardings.params),
        mngr=mngr,
        log=log,
        mesh=mesh,
        wall_offset=history[-1]["wall_s"] if history else 0.0,
    )


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    mesh_cfg: MeshConfig,
    run_dir: str,
    *,
    max_steps: int | None = None,
) -> dict:
    """Trains (or resumes) one run to `train_cfg.tokens`, or stops after `max_steps` with a checkpoint.

    Returns the summary (also written to summary.json once the run is complete); a complete run
    directory with the same configuration is not trained again.
    """
    model_cfg = model_cfg.validate()
    train_cfg = train_cfg.validate(model_cfg.seq_len)
    mesh = sharding.make_mesh(mesh_cfg)
    sharding.check_fits(mesh, model_cfg, train_cfg.batch_size)
    config = run_config(model_cfg, train_cfg, mesh_cfg)
    _write_config(run_dir, config)
    summary_path = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            return json.load(f)

    total_steps = train_cfg.steps(model_cfg.seq_len)
    stop_step = total_steps if max_steps is None else min(max_steps, total_steps)
    run = _build(model_cfg, train_cfg, mesh, run_dir, total_steps)
    start_time = time.perf_counter()
    last = _loop(run, train_cfg, model_cfg.seq_len, config["counts"]["flops_per_token"], total_steps, stop_step)
    summary = {
        "steps": stop_step,
        "complete": stop_step == total_steps,
        "tokens": stop_step * train_cfg.batch_size * model_cfg.seq_len,
        "final_train_loss": last["loss"],
        "final_eval_loss": last["eval_loss"],
        "wall_s": run.wall_offset + time.perf_counter() - start_time,
        **config["counts"],
    }
    if summary["complete"] and jax.process_index() == 0:
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _loop(run: _Run, train_cfg: TrainConfig, seq_len: int, flops_per_token: float, total_steps: int, stop_step: int):
    """Steps from the restored step to `stop_step`, logging, evaluating and checkpointing on schedule.

    Returns the last logged {"loss", "eval_loss"}.
    """
    eval_every = train_cfg.eval_every or max(1, total_steps // 10)
    log_every = max(1, min(train_cfg.log_every, total_steps))
    tokens_per_step = train_cfg.batch_size * seq_len
    start_step = int(run.state.step)
    start_time = interval_start = time.perf_counter()
    pending, last = [], {"loss": float("nan"), "eval_loss": None}
    show = sys.stderr.isatty() and jax.process_index() == 0
    bar = tqdm(total=stop_step, initial=start_step, disable=not show, unit="step", dynamic_ncols=True)
    state = run.state
    with sharding.activate(run.mesh):
        for step in range(start_step, stop_step):
            state, metrics = run.step_fn(state, run.loader(step))
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
                    "eval_loss": run.evaluate(state.params) if is_eval else None,
                    "wall_s": run.wall_offset + now - start_time,
                }
                run.log.write(record)
                last.update(loss=record["loss"], eval_loss=record["eval_loss"] or last["eval_loss"])
                bar.set_postfix(loss=f"{record['loss']:.3f}", eval=f"{last['eval_loss'] or float('nan'):.3f}")
                pending, interval_start = [], time.perf_counter()
            checkpoints.save(run.mngr, done, state, force=done == stop_step)
            bar.update(1)
    bar.close()
    run.mngr.wait_until_finished()
    run.mngr.close()
    return last
