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
from scaling.models.registry import get_architecture
from scaling.train.metrics import throughput
from scaling.train.state import abstract_state, create_state
from scaling.train.steps import jit_train_step


def random_batch(cfg: ModelConfig, batch_size: int, mesh) -> dict:
    """A batch of uniformly random tokens laid out over the mesh (throughput does not depend on values)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch_size, cfg.seq_len + 1), dtype=np.int32)
    host = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch_size, cfg.seq_len), np.float32)}
    return jax.device_put(host, sharding.batch_sharding(mesh))


class _Runner:
    """One model's compiled train step with its own state and batch."""

    def __init__(self, model_cfg: ModelConfig, batch_size: int, mesh):
        self.cfg = model_cfg.validate()
        arch = get_architecture(self.cfg.arch)
        sharding.check_fits(mesh, self.cfg, batch_size)
        model = arch.model(self.cfg)
        tx, _ = arch.optimizer(TrainConfig(batch_size=batch_size), 1000)
        _, shardings = abstract_state(model, tx, self.cfg, 0, mesh)
        self.state = create_state(model, tx, self.cfg, 0, mesh, arch.post_step)
        self.batch = random_batch(self.cfg, batch_size, mesh)
        self.mesh = mesh
        with sharding.activate(mesh):
            start = time.perf_counter()
            step = jit_train_step(model, tx, 0, arch.post_step, shardings, mesh)
            self.step = step.lower(self.state, self.batch).compile()
            self.compile_s = time.perf_counter() - start
        self.times = []

    def run(self, timed: bool) -> None:
        with sharding.activate(self.mesh):
            start = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch)
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
            runner.run(timed=i >= warmup)
    results = []
    for runner in runners:
        step_s = statistics.median(runner.times)
        counts = get_architecture(runner.cfg.arch).counts(runner.cfg)
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
