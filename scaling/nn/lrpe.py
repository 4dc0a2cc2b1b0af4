"""Linearized relative positional encoding (LRPE; Qin et al. 2023, "Linearized Relative Positional
Encoding", and TransNormerLLM section 3.1), the form usable inside linear attention.

q_t -> [q_t cos(theta t), q_t sin(theta t)] and likewise k_s, so that the inner product becomes
sum_i q_ti k_si cos(theta_i (t - s)): relative, and still a plain dot product of feature maps.
The head dim doubles; theta [heads, d_head] is learned, initialised as in the official code: the
heads' dims in a row, i = h d_head + j of d = heads x d_head, theta_i = 10000^(-2i/d), so each head
covers its own band of frequencies.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def lrpe_init(key, shape, dtype=jnp.float32) -> jax.Array:
    """theta_{h,j} = 10000^(-2i/d), i = h d_head + j, d = heads x d_head."""
    del key
    size = shape[0] * shape[1]
    return (10000.0 ** (-2.0 * jnp.arange(size, dtype=dtype) / size)).reshape(shape)


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
