"""Bias-free projections with logical axis names and the GPT-2 scaled initialisation."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig


def residual_std(cfg: ModelConfig) -> float:
    """Init std of a residual branch's output projection: 0.02 / sqrt(2 L) (GPT-2, Radford et al. 2019)."""
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)


class Linear(nn.Module):
    """y = x . W contracting x's last `in_dims` axes; W [in..., out...] is fp32 with logical axis names."""

    features: tuple[int, ...]
    logical_axes: tuple[str, ...]
    std: float
    dtype: str = "float32"
    in_dims: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape[x.ndim - self.in_dims :] + tuple(self.features)
        init = nn.with_logical_partitioning(nn.initializers.normal(self.std), self.logical_axes)
        kernel = self.param("kernel", init, shape, jnp.float32)
        dtype = jnp.dtype(self.dtype)
        lead = x.shape[: x.ndim - self.in_dims]
        # As one 2-D matmul: XLA:CPU runs the weight gradient of a 3-D contraction ~2x slower.
        flat = x.reshape(-1, math.prod(shape[: self.in_dims])).astype(dtype)
        out = flat @ kernel.reshape(flat.shape[1], -1).astype(dtype)
        return out.reshape(lead + tuple(self.features))


def dense(cfg: ModelConfig, features, logical_axes, *, in_dims=1, residual=False, name=None) -> Linear:
    """A Linear in the model's compute dtype with N(0, 0.02^2) init (scaled down on residual outputs)."""
    features = (features,) if isinstance(features, int) else tuple(features)
    std = residual_std(cfg) if residual else cfg.init_std
    return Linear(features, logical_axes, std, cfg.dtype, in_dims, name=name)
