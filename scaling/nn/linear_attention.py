"""Causal linear attention with a fixed per-head decay (TransNormerLLM, Qin et al. 2023, eq. 10).

    o_t = sum_{s <= t} lambda^(t - s) (q_t . k_s) v_s          (no 1/sqrt(d) scale, no softmax)

in four mathematically equal forms (REFERENCE.md section 5):

- `parallel`: the T x T decay-masked product [(Q K^T) * M] V, M_ts = lambda^(t - s) for t >= s.
- `chunked`: Lightning Attention-2 (Qin et al. 2024, arXiv 2401.04658, Algorithm 1). Within a chunk of
  C tokens, the masked product; across chunks, a state KV [d_k, d_v] carried in float32,
      o_i += (q_i lambda^(i+1)) KV,       KV <- lambda^C KV + sum_j (k_j lambda^(C-j-1))^T v_j.
  Every decay exponent is <= 0 (lambda^(-t) is never formed). Its custom VJP is Algorithm 2: the same
  chunk loop in reverse with the dKV state, so only q, k, v are saved for the backward pass.
- `recurrent`: one token at a time, KV_t = lambda KV_{t-1} + k_t^T v_t, o_t = q_t KV_t (inference).
- `pallas`: `chunked` as fused kernels that keep KV in registers instead of writing every chunk's
  state to memory (lightning_kernel.py; Triton on a GPU, Pallas' interpret mode elsewhere), run on
  each device's own sequences and heads.

`auto` picks `pallas` where it compiles to Triton and `chunked` elsewhere (`auto_form`).

Shapes: q, k [batch, length, heads, d_k]; v [batch, length, heads, d_v]; decay [heads] in (0, 1).
`parallel`, `chunked` and `recurrent` compute in float32; `pallas` takes the inputs' dtype for its dots
and accumulates in float32. All return v's dtype.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from scaling.nn.attention import compiling_for
from scaling.nn.lightning_kernel import lightning

FORMS = ("parallel", "chunked", "recurrent", "pallas")


def linear_attention(q, k, v, decay, *, form: str = "chunked", chunk_size: int = 64) -> jax.Array:
    """Causal decayed linear attention [batch, length, heads, d_v] computed in the given form."""
    if form == "auto":
        form = auto_form(q.shape[-1], v.shape[-1], chunk_size)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS} or auto, got {form!r}")
    if form == "parallel":
        return parallel(q, k, v, decay)
    if form == "recurrent":
        state = jnp.zeros(q.shape[:1] + q.shape[2:] + v.shape[-1:], jnp.float32)
        return recurrent(q, k, v, decay, state)[0]
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    return (lightning_per_shard if form == "pallas" else chunked)(q, k, v, decay, chunk_size)


def auto_form(d_k: int, d_v: int, chunk_size: int) -> str:
    """`pallas` where its kernels compile to Triton (a GPU; head sizes and chunk powers of two, 16 or
    more), else `chunked`. On an H200 the kernels ran the forward+backward 3.5-4.4x faster than
    `chunked` from 4k to 64k tokens (b4 h32 d128 bf16, benchmarks/results/h200_suite.jsonl); elsewhere
    Pallas only interprets them."""
    triton = all(n >= 16 and n & (n - 1) == 0 for n in (d_k, d_v, chunk_size))
    return "pallas" if triton and compiling_for() == "gpu" else "chunked"


def lightning_per_shard(q, k, v, decay, chunk_size: int) -> jax.Array:
    """The Pallas kernels on each device's own sequences and heads, as the logical-axis rules in
    context lay them out (XLA cannot split a kernel between devices: it would gather its inputs whole
    onto every device)."""
    if jax.sharding.get_abstract_mesh().empty:
        return lightning(q, k, v, decay, chunk_size)
    spec = nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"))
    per_shard = jax.shard_map(lambda q, k, v, decay: lightning(q, k, v, decay, chunk_size),
                              in_specs=(spec, spec, spec, PartitionSpec(spec[2])), out_specs=spec, check_vma=False)
    return per_shard(q, k, v, decay)


def _rate(decay: jax.Array) -> jax.Array:
    """-log(lambda) >= 0 per head: lambda^n is computed as exp(-n * rate), exponent never positive."""
    return -jnp.log(decay.astype(jnp.float32))


def _decay_mask(rate: jax.Array, length: int) -> jax.Array:
    """M [heads, length, length]: lambda^(i - j) for i >= j, else 0."""
    i = jnp.arange(length)
    distance = (i[:, None] - i[None, :]).astype(jnp.float32)
    causal = distance >= 0
    return jnp.where(causal, jnp.exp(-rate[:, None, None] * jnp.where(causal, distance, 0.0)), 0.0)


def parallel(q, k, v, decay) -> jax.Array:
    """[(Q K^T) * M] V over the full T x T square: the O(T^2) reference."""
    f32 = lambda x: x.astype(jnp.float32)
    scores = jnp.einsum("bihd,bjhd->bhij", f32(q), f32(k)) * _decay_mask(_rate(decay), q.shape[1])
    return jnp.einsum("bhij,bjhe->bihe", scores, f32(v)).astype(v.dtype)


def recurrent(q, k, v, decay, state) -> tuple[jax.Array, jax.Array]:
    """(outputs, final state) of KV_t = lambda KV_{t-1} + k_t^T v_t, o_t = q_t KV_t from `state`.

    state: [batch, heads, d_k, d_v] float32; constant memory in the number of tokens.
    """
    lam = decay.astype(jnp.float32)[:, None, None]

    def step(kv, qkv_t):
        q_t, k_t, v_t = qkv_t
        kv = lam * kv + jnp.einsum("bhd,bhe->bhde", k_t, v_t)
        return kv, jnp.einsum("bhd,bhde->bhe", q_t, kv)

    time_major = [jnp.moveaxis(x.astype(jnp.float32), 1, 0) for x in (q, k, v)]
    state, out = jax.lax.scan(step, state.astype(jnp.float32), time_major)
    return jnp.moveaxis(out, 0, 1).astype(v.dtype), state


def chunk_plan(length: int, chunk_size: int) -> tuple[int, int]:
    """(chunk length c, number of chunks): c = min(chunk_size, length); the tail chunk is zero-padded."""
    c = min(chunk_size, length)
    return c, -(-length // c)


def _chunks(x: jax.Array, c: int, n: int) -> jax.Array:
    """[b, t, h, d] -> [b, n, c, h, d] float32, zero-padded at the end (padding adds nothing)."""
    x = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, n * c - x.shape[1]), (0, 0), (0, 0)))
    return x.reshape(x.shape[0], n, c, *x.shape[2:])


def _unchunk(x: jax.Array, length: int, dtype) -> jax.Array:
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length].astype(dtype)


def _decays(rate: jax.Array, c: int):
    """Within-chunk factors: mask M [h, c, c], q-side lambda^(i+1) and k-side lambda^(c-1-j) as
    [c, h, 1], and the whole-chunk lambda^c as [h, 1, 1]; all exponents <= 0."""
    i = jnp.arange(c, dtype=jnp.float32)[:, None, None]
    return (
        _decay_mask(rate, c),
        jnp.exp(-rate[:, None] * (i + 1)),
        jnp.exp(-rate[:, None] * (c - 1 - i)),
        jnp.exp(-rate * c)[:, None, None],
    )


def _entering_states(k, v, k_decay, chunk_decay) -> jax.Array:
    """KV before each chunk [b, n, h, d_k, d_v]: a scan over chunks of KV <- lambda^C KV + kv_chunk."""
    per_chunk = jnp.einsum("bnjhd,bnjhe->nbhde", k * k_decay, v)

    def step(kv, kv_chunk):
        return chunk_decay * kv + kv_chunk, kv

    _, states = jax.lax.scan(step, jnp.zeros_like(per_chunk[0]), per_chunk)
    return jnp.moveaxis(states, 0, 1)


def _chunked_forward(q, k, v, decay, chunk_size):
    length = q.shape[1]
    c, n = chunk_plan(length, chunk_size)
    mask, q_decay, k_decay, chunk_decay = _decays(_rate(decay), c)
    qc, kc, vc = (_chunks(x, c, n) for x in (q, k, v))
    scores = jnp.einsum("bnihd,bnjhd->bnhij", qc, kc) * mask
    intra = jnp.einsum("bnhij,bnjhe->bnihe", scores, vc)
    inter = jnp.einsum("bnihd,bnhde->bnihe", qc * q_decay, _entering_states(kc, vc, k_decay, chunk_decay))
    return _unchunk(intra + inter, length, v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def chunked(q, k, v, decay, chunk_size: int) -> jax.Array:
    """Lightning Attention-2 forward (Algorithm 1); memory O(T d + (T/C) d^2), time O(T C d + T d^2)."""
    return _chunked_forward(q, k, v, decay, chunk_size)


def _chunked_fwd(q, k, v, decay, chunk_size):
    return _chunked_forward(q, k, v, decay, chunk_size), (q, k, v, decay)


def _chunked_bwd(chunk_size, residuals, d_out):
    """Lightning Attention-2 backward (Algorithm 2). With G_n = dLoss/dKV_n (the state entering chunk n):

        dq_i = [(dO V^T) * M] K + lambda^(i+1) dO_i KV_n^T
        G_n  = lambda^C G_{n+1} + sum_i (q_i lambda^(i+1))^T dO_i      (reverse scan, G_N = 0)
        dk_j = [(dO V^T) * M]^T Q + lambda^(C-1-j) v_j G_{n+1}^T
        dv_j = [(Q K^T) * M]^T dO + lambda^(C-1-j) k_j G_{n+1}

    The decay is a fixed constant of the model (REFERENCE.md section 5): its cotangent is zero.
    """
    q, k, v, decay = residuals
    length = q.shape[1]
    c, n = chunk_plan(length, chunk_size)
    mask, q_decay, k_decay, chunk_decay = _decays(_rate(decay), c)
    qc, kc, vc, doc = (_chunks(x, c, n) for x in (q, k, v, d_out))
    d_scores = jnp.einsum("bnihe,bnjhe->bnhij", doc, vc) * mask
    scores = jnp.einsum("bnihd,bnjhd->bnhij", qc, kc) * mask
    states = _entering_states(kc, vc, k_decay, chunk_decay)
    dq = jnp.einsum("bnhij,bnjhd->bnihd", d_scores, kc) + jnp.einsum("bnihe,bnhde->bnihd", doc, states) * q_decay

    per_chunk = jnp.einsum("bnihd,bnihe->nbhde", qc * q_decay, doc)

    def step(g_next, g_chunk):
        return chunk_decay * g_next + g_chunk, g_next

    _, g_after = jax.lax.scan(step, jnp.zeros_like(per_chunk[0]), per_chunk, reverse=True)
    g_after = jnp.moveaxis(g_after, 0, 1)
    dk = jnp.einsum("bnhij,bnihd->bnjhd", d_scores, qc) + jnp.einsum("bnjhe,bnhde->bnjhd", vc, g_after) * k_decay
    dv = jnp.einsum("bnhij,bnihe->bnjhe", scores, doc) + jnp.einsum("bnjhd,bnhde->bnjhe", kc * k_decay, g_after)
    return (_unchunk(dq, length, q.dtype), _unchunk(dk, length, k.dtype), _unchunk(dv, length, v.dtype),
            jnp.zeros_like(decay))


chunked.defvjp(_chunked_fwd, _chunked_bwd)
