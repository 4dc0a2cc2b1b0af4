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
from scaling.train.metrics import throughput
from scaling.train.run import Run


def random_batch(cfg: ModelConfig, batch_size: int, mesh) -> dict:
    """A batch of uniformly random tokens laid out over the mesh (throughput does not depend on values)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch_size, cfg.seq_len + 1), dtype=np.int32)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch_size, cfg.seq_len), np.float32)}
    return jax.device_put(host, sharding.batch_sharding(mesh))


class _Runner:
    """One model's compiled train step with its own state and batch."""

    def __init__(self, model_cfg: ModelConfig, batch_size: int, mesh):
        one_batch = TrainConfig(batch_size=batch_size, tokens=batch_size * model_cfg.seq_len)
        self.run = Run(model_cfg, one_batch, mesh, total_steps=1000)
        self.cfg = self.run.model_cfg
        self.state = self.run.init_state()
        self.batch = random_batch(self.cfg, batch_size, mesh)
        self.mesh = mesh
        start = time.perf_counter()
        self.step = self.run.compile_train_step()
        self.compile_s = time.perf_counter() - start
        self.times = []

    def advance(self, timed: bool) -> None:
        with sharding.activate(self.mesh):
            start = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch, None)
            jax.block_until_ready(metrics)
        if timed:
            self.times.append(time.perf_counter() - start)


def time_train_steps(
    model_cfgs: list[ModelConfig],
    batch_size: int,
    mesh_cfg: MeshConfig = MeshConfig(),
    *,
    steps: int = 5,
    warmup: int = 2,
) -> list[dict]:
    """Compiles every model's train step, then runs `warmup` untimed and `steps` timed rounds of one
    step each; returns per model its median step time, compile time and throughput."""
    mesh = sharding.make_mesh(mesh_cfg)
    runners = [_Runner(cfg, batch_size, mesh) for cfg in model_cfgs]
    for i in range(warmup + steps):
        for runner in runners:
            runner.advance(timed=i >= warmup)
    results = []
    for runner in runners:
        step_s = statistics.median(runner.times)
        counts = runner.run.arch.counts(runner.cfg)
        results.append({
            "step_s": step_s,
            "compile_s": runner.compile_s,
            "flops_per_token": counts.flops_per_token,
            **throughput(counts.flops_per_token, batch_size * runner.cfg.seq_len, step_s, mesh.size),
        })
    return results


def time_train_step(model_cfg: ModelConfig, batch_size: int, mesh_cfg: MeshConfig = MeshConfig(), **timing) -> dict:
    """`time_train_steps` of one model."""
    return time_train_steps([model_cfg], batch_size, mesh_cfg, **timing)[0]
