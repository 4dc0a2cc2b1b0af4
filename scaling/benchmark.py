"""Measured throughput of the real train step on the current devices (used by bench and sweep estimates)."""
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


def time_train_step(
    model_cfg: ModelConfig, batch_size: int, mesh_cfg: MeshConfig = MeshConfig(), *, steps: int = 5, warmup: int = 2
) -> dict:
    """Compiles the architecture's train step and times `steps` calls after `warmup` (median step time)."""
    model_cfg = model_cfg.validate()
    arch = get_architecture(model_cfg.arch)
    mesh = sharding.make_mesh(mesh_cfg)
    sharding.check_fits(mesh, model_cfg, batch_size)
    model = arch.model(model_cfg)
    tx, _ = arch.optimizer(TrainConfig(batch_size=batch_size), 1000)
    _, shardings = abstract_state(model, tx, model_cfg, 0, mesh)
    state = create_state(model, tx, model_cfg, 0, mesh, arch.post_step)
    batch = random_batch(model_cfg, batch_size, mesh)
    with sharding.activate(mesh):
        start = time.perf_counter()
        step = jit_train_step(model, tx, 0, arch.post_step, shardings, mesh).lower(state, batch).compile()
        compile_s = time.perf_counter() - start
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    counts = arch.counts(model_cfg)
    return {
        "step_s": step_s,
        "compile_s": compile_s,
        "flops_per_token": counts.flops_per_token,
        **throughput(counts.flops_per_token, batch_size * model_cfg.seq_len, step_s, mesh.size),
    }
