"""Causal multi-head softmax attention with RoPE (Vaswani et al. 2017, eq. 1), shared by every
softmax-attention architecture (nGPT's normalised q/k and scale are options)."""
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.nn.linear import dense
from scaling.nn.rope import apply_rope

FUSED_DTYPES = (jnp.bfloat16, jnp.float16)
QUERY_BLOCK = 256


@jax.custom_jvp
def masked_softmax(scores: jax.Array, visible: jax.Array) -> jax.Array:
    """softmax over the last axis of `scores` where `visible`, the rest weighted 0 (a row with no
    visible entry is uniform).

    Its derivative is the softmax Jacobian applied to the visible tangents, y * (ds - <y, ds>), which
    needs y alone: differentiated through its exp, sum and division, the softmax keeps three score-
    sized arrays and the mask for the backward pass (jax.nn.softmax does, unless the global
    jax_softmax_custom_jvp flag is set).
    """
    return jax.nn.softmax(jnp.where(visible, scores, jnp.finfo(scores.dtype).min), axis=-1)


@masked_softmax.defjvp
def _masked_softmax_jvp(primals, tangents):
    scores, visible = primals
    weights = masked_softmax(scores, visible)
    visible_tangents = jnp.where(visible, tangents[0], 0)
    return weights, weights * (visible_tangents - jnp.sum(weights * visible_tangents, axis=-1, keepdims=True))


def _masked_softmax_attention(q, k, v, scale: float, visible: jax.Array) -> jax.Array:
    """softmax(scale q k^T where visible, else -inf) v; scores and softmax in float32.

    Heads-major: q [b, h, n, d], k and v [b, h, s, d], visible broadcastable to [b, h, n, s]; both
    products are then batched matmuls over (b, h) as they stand, where with the heads after the
    positions XLA:CPU transposes v and the output across d and the positions (benchmarks/README.md, CPU).
    """
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    weights = masked_softmax(scores, visible).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


def compiling_for() -> str:
    """The platform of the devices being compiled for: those of the mesh in context (which may be
    compile-only devices of a kind this host lacks, scaling.hardware), else the default backend's."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() if device is None else device.platform


def causal_attention(q, k, v, scale: float, mask: jax.Array | None = None) -> jax.Array:
    """Causal softmax attention over q, k, v [batch, length, heads, d_head].

    `mask` [batch, length] (optional) removes tokens as keys. Half-precision inputs compiled for a GPU
    go to cuDNN's fused flash attention, where cuDNN takes them (jax's default implementation is XLA's,
    which materialises the scores). Elsewhere the queries go in blocks of QUERY_BLOCK, each scored
    against the keys up to its last position only, so the blocks above the diagonal, which causality
    masks whole, are never computed (n blocks compute (n + 1) / 2n of the T x T scores; scaling.flops
    counts the full square, the usual convention). On an AVX2-only CPU (benchmarks/README.md, CPU), side by
    side with the whole square, blocks of 256 took 6% and 15% off the train step at 512 and 1024
    tokens; blocks of 128 were level with them at 256 and 512 tokens and 1-4% slower at 1024, blocks
    of 64 slower still.
    """
    if mask is None and q.dtype in FUSED_DTYPES and compiling_for() == "gpu":
        try:
            return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation="cudnn")
        except (NotImplementedError, RuntimeError, ValueError):  # cuDNN absent or the shape unsupported
            pass
    q, k, v = (jnp.swapaxes(y, 1, 2) for y in (q, k, v))
    length = q.shape[2]
    outputs = []
    for start in range(0, length, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, length)
        visible = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
        if mask is not None:
            visible = visible & mask[:, None, None, :end]
        outputs.append(_masked_softmax_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end], scale, visible))
    return jnp.swapaxes(jnp.concatenate(outputs, axis=2), 1, 2)


def decoding(module: nn.Module) -> bool:
    """True when a module is applied for incremental decoding: its 'cache' collection is mutable
    (scaling.sample applies models with mutable=['cache']; training and init never do)."""
    return module.is_mutable_collection("cache") and not module.is_initializing()


def cached_attention(module: nn.Module, q, k, v, scale: float, capacity: int, positions, keep=None) -> jax.Array:
    """Causal attention of n new tokens at consecutive `positions` [batch, n] (the same in every row)
    over a KV cache of `capacity` slots, one per position (in module's 'cache', heads-major).

    The new keys and values are written at their positions' slots; a query attends to the slots at
    or before its position that hold a present token. `keep` [batch, n] (default all) marks the new
    tokens later ones may attend to: a token that skipped a routed block is not in that block's
    cache. Equal to `causal_attention` over the whole prefix.
    """
    batch, n, heads, d_head = k.shape
    keys = module.variable("cache", "key", jnp.zeros, (batch, heads, capacity, d_head), k.dtype)
    values = module.variable("cache", "value", jnp.zeros, (batch, heads, capacity, d_head), v.dtype)
    present = module.variable("cache", "present", jnp.zeros, (batch, capacity), bool)
    start = positions[0, 0]
    keep = jnp.ones((batch, n), bool) if keep is None else keep
    keys.value = jax.lax.dynamic_update_slice(keys.value, jnp.swapaxes(k, 1, 2), (0, 0, start, 0))
    values.value = jax.lax.dynamic_update_slice(values.value, jnp.swapaxes(v, 1, 2), (0, 0, start, 0))
    present.value = jax.lax.dynamic_update_slice(present.value, keep, (0, start))
    causal = jnp.arange(capacity)[None, None, :] <= positions[:, :, None]
    visible = (causal & present.value[:, None, :])[:, None]
    out = _masked_softmax_attention(jnp.swapaxes(q, 1, 2), keys.value, values.value, scale, visible)
    return jnp.swapaxes(out, 1, 2)


class CausalSelfAttention(nn.Module):
    """Fused q, k, v projection (no bias), RoPE on q and k, causal softmax attention, output projection.

    One [d, 3, heads, d_head] kernel instead of three: the same function, fewer and larger matmuls.
    Its output is unstacked into q, k and v, whose gradients are then stacked back in one pass
    (indexing them out instead makes each gradient a zero-padded copy of the whole, summed).
    `qk_norm(config, name=...)` (optional) maps (q, k) after RoPE, e.g. nGPT's s_qk * Norm(.);
    `softmax_scale` defaults to 1/sqrt(d_head). When decoding (see `decoding`), keys and values go
    through a KV cache of seq_len slots. `mask` [batch, length] marks the tokens present.
    """

    config: ModelConfig
    qk_norm: Callable[..., nn.Module] | None = None
    softmax_scale: float | None = None

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        heads = (cfg.n_heads, cfg.d_head)
        qkv = dense(cfg, (3,) + heads, ("embed", None, "heads", "kv"), name="qkv")(x)
        q, k, v = jnp.unstack(qkv, axis=2)
        q, k = (apply_rope(y, positions, cfg.seq_len, cfg.rope_base) for y in (q, k))
        if self.qk_norm is not None:
            q, k = self.qk_norm(cfg, name="qk_norm")(q, k)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
        scale = 1.0 / math.sqrt(cfg.d_head) if self.softmax_scale is None else self.softmax_scale
        if decoding(self):
            out = cached_attention(self, q, k, v, scale, cfg.seq_len, positions, keep=mask)
        else:
            out = causal_attention(q, k, v, scale, mask)
        return dense(cfg, cfg.d_model, ("heads", "kv", "embed"), in_dims=2, residual=True, name="out")(out)
