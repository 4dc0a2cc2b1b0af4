"""Rotary position embedding, rotate-half form (Su et al. 2021, RoFormer eq. 34)."""
import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotates x [batch, length, heads, d_head] by angle position * base^(-2i/d_head) per pair (i, i + d/2).

    Returns [x1 cos - x2 sin, x1 sin + x2 cos] over the two halves of d_head, so that
    <rope(q, m), rope(k, n)> depends only on m - n and norms are preserved. `positions` is
    [batch, length] (true token positions: routed blocks and decoding pass their own).
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rotated.astype(x.dtype)
