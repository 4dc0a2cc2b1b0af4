"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared tiny configurations."""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from scaling.config import ModelConfig, TrainConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model() -> ModelConfig:
    """A model small enough to compile and train in a second, with heads divisible by 4."""
    return ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=32)


@pytest.fixture(scope="session")
def tiny_train() -> TrainConfig:
    """Eight steps of batch 8 on synthetic data, logging and evaluating every other step."""
    return TrainConfig(
        tokens=8 * 8 * 32, batch_size=8, learning_rate=1e-2, data="synthetic",
        eval_every=2, eval_batches=2, log_every=1, checkpoint_every=2,
    )
