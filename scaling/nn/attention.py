"""Causal multi-head softmax attention with RoPE (Vaswani et al. 2017, eq. 1)."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.nn.linear import dense
from scaling.nn.rope import apply_rope


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float) -> jax.Array:
    """softmax(scale * q k^T + causal mask) v, scores and softmax in float32.

    q, k, v: [batch, length, heads, d_head]. The full T x T score matrix is computed (and counted by
    scaling.flops); masked entries get -inf before the softmax.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    length = q.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class CausalSelfAttention(nn.Module):
    """Fused q, k, v projection (no bias), RoPE on q and k, causal softmax attention, output projection.

    One [d, 3, heads, d_head] kernel instead of three: the same function, fewer and larger matmuls.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        cfg = self.config
        heads = (cfg.n_heads, cfg.d_head)
        qkv = dense(cfg, (3,) + heads, ("embed", None, "heads", "kv"), name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = nn.with_logical_constraint(apply_rope(q, positions, cfg.rope_base), ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(apply_rope(k, positions, cfg.rope_base), ("batch", "length", "heads", "kv"))
        out = causal_attention(q, k, v, 1.0 / math.sqrt(cfg.d_head))
        return dense(cfg, cfg.d_model, ("heads", "kv", "embed"), in_dims=2, residual=True, name="out")(out)
