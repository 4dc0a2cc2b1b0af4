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


def decoding(module: nn.Module) -> bool:
    """True when a module is applied for incremental decoding: its 'cache' collection is mutable
    (scaling.sample applies models with mutable=['cache']; training and init never do)."""
    return module.is_mutable_collection("cache") and not module.is_initializing()


def cached_attention(module: nn.Module, q, k, v, scale: float, capacity: int) -> jax.Array:
    """Causal attention of n new tokens over a KV cache of `capacity` slots (in module's 'cache').

    The new keys and values are written at the cache index; query i (absolute position index + i)
    attends to the slots <= its position. Equal to `causal_attention` over the whole prefix.
    """
    batch, n, heads, d_head = k.shape
    keys = module.variable("cache", "key", jnp.zeros, (batch, capacity, heads, d_head), k.dtype)
    values = module.variable("cache", "value", jnp.zeros, (batch, capacity, heads, d_head), v.dtype)
    index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    start = index.value
    keys.value = jax.lax.dynamic_update_slice(keys.value, k, (0, start, 0, 0))
    values.value = jax.lax.dynamic_update_slice(values.value, v, (0, start, 0, 0))
    index.value = start + n
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys.value, preferred_element_type=jnp.float32) * scale
    visible = jnp.arange(capacity)[None, :] <= start + jnp.arange(n)[:, None]
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, values.value)


class CausalSelfAttention(nn.Module):
    """Fused q, k, v projection (no bias), RoPE on q and k, causal softmax attention, output projection.

    One [d, 3, heads, d_head] kernel instead of three: the same function, fewer and larger matmuls.
    When decoding (see `decoding`), keys and values go through a KV cache of seq_len slots.
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
        scale = 1.0 / math.sqrt(cfg.d_head)
        if decoding(self):
            out = cached_attention(self, q, k, v, scale, cfg.seq_len)
        else:
            out = causal_attention(q, k, v, scale)
        return dense(cfg, cfg.d_model, ("heads", "kv", "embed"), in_dims=2, residual=True, name="out")(out)
