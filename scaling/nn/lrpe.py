"""Linearized relative positional encoding (LRPE; Qin et al. 2023, "Linearized Relative Positional
Encoding", and TransNormerLLM section 3.1), the form usable inside linear attention.

q_t -> [q_t cos(theta t), q_t sin(theta t)] and likewise k_s, so that the inner product becomes
sum_i q_ti k_si cos(theta_i (t - s)): relative, and still a plain dot product of feature maps.
The head dim doubles; theta [heads, d_head] is learned, initialised to 10000^(-2i/d_head).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def lrpe_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """theta_{h,i} = 10000^(-2i/d) for every head."""
    del key
    heads, dim = shape
    return jnp.broadcast_to(10000.0 ** (-2.0 * jnp.arange(dim, dtype=dtype) / dim), (heads, dim))


class LRPE(nn.Module):
    """[batch, length, heads, d] at `positions` [batch, length] -> [batch, length, heads, 2d] (float32)."""

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        theta = self.param(
            "theta", nn.with_logical_partitioning(lrpe_init, ("heads", "kv")), x.shape[-2:], jnp.float32
        )
        angles = positions.astype(jnp.float32)[:, :, None, None] * theta
        x32 = x.astype(jnp.float32)
        return jnp.concatenate([x32 * jnp.cos(angles), x32 * jnp.sin(angles)], axis=-1).astype(x.dtype)
