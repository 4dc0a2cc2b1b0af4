"""Measured throughput of the real train step on the current devices (used by bench, speedup and sweep estimates).

Several models are timed side by side: all are compiled first, then their steps alternate, one step
of each per round, so that a change in the machine's load touches every model alike and their ratio
stays meaningful on a shared machine.
"""
import statistics
import time

import jax
import numpy as np

from scaling import sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig
from scaling.train import fitting
from scaling.train.metrics import throughput


def random_batch(cfg: ModelConfig, batch_size: int, mesh) -> dict:
    """A batch of uniformly random tokens laid out over the mesh (throughput does not depend on values)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch_size, cfg.seq_len + 1), dtype=np.int32)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch_size, cfg.seq_len), np.float32)}
    return jax.device_put(host, sharding.batch_sharding(mesh))


def median_seconds(fn, *args, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of `fn(*args)` (synchronised) after `warmup` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit_for_timing(model_cfg: ModelConfig, batch_size: int, mesh_cfg: MeshConfig = MeshConfig(),
                   memory: int | None = None, devices=None) -> fitting.Fit:
    """The model's run at one batch, remat and microbatches fitted to `memory` bytes per device (of
    `devices`, default all)."""
    one_batch = TrainConfig(batch_size=batch_size, tokens=batch_size * model_cfg.seq_len)
    return fitting.fit(model_cfg, one_batch, mesh_cfg, memory, name=model_cfg.arch, devices=devices, total_steps=1000)


class _Runner:
    """One fitted run's compiled train step with its own state and batch."""

    def __init__(self, fit: fitting.Fit):
        self.fit, self.run = fit, fit.run
        start = time.perf_counter()
        self.step = self.run.compiled_train_step
        self.compile_s = fit.seconds + time.perf_counter() - start
        self.state = self.run.init_state()
        self.batch = random_batch(self.run.model_cfg, self.run.train_cfg.batch_size, self.run.mesh)
        self.times = []

    def advance(self, timed: bool) -> None:
        with sharding.activate(self.run.mesh):
            start = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch, None)
            jax.block_until_ready(metrics)
        if timed:
            self.times.append(time.perf_counter() - start)

    def result(self) -> dict:
        run, step_s = self.run, statistics.median(self.times)
        counts = run.arch.counts(run.model_cfg)
        tokens = run.train_cfg.batch_size * run.model_cfg.seq_len
        return {
            "step_s": step_s,
            "compile_s": self.compile_s,
            "flops_per_token": counts.flops_per_token,
            "remat": run.model_cfg.remat,
            "microbatches": run.train_cfg.microbatches,
            "mesh": self.fit.mesh_cfg.text(),
            "gib_per_device": run.memory_per_device() / fitting.GIB,
            **throughput(counts.flops_per_token, tokens, step_s, run.mesh.size),
        }


def time_fits(fits: list[fitting.Fit], *, steps: int = 5, warmup: int = 2) -> list[dict]:
    """Compiles every fitted run's train step, then runs `warmup` untimed and `steps` timed rounds of one
    step each; returns per run its median step time, compile time, throughput, fitted settings and
    compiled memory per device."""
    runners = [_Runner(fit) for fit in fits]
    for i in range(warmup + steps):
        for runner in runners:
            runner.advance(timed=i >= warmup)
    return [runner.result() for runner in runners]


def time_train_steps(model_cfgs: list[ModelConfig], batch_size: int, mesh_cfg: MeshConfig = MeshConfig(), *,
                     memory: int | None = None, **timing) -> list[dict]:
    """`time_fits` of the models fitted at one batch size (scaling/train/fitting.py)."""
    return time_fits([fit_for_timing(cfg, batch_size, mesh_cfg, memory) for cfg in model_cfgs], **timing)


def time_train_step(model_cfg: ModelConfig, batch_size: int, mesh_cfg: MeshConfig = MeshConfig(), **timing) -> dict:
    """`time_train_steps` of one model."""
    return time_train_steps([model_cfg], batch_size, mesh_cfg, **timing)[0]
