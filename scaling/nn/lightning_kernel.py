"""Lightning Attention-2 as Pallas kernels (Qin et al. 2024, arXiv 2401.04658, Algorithms 1 and 2).

The `chunked` form (linear_attention.py) writes every chunk's entering state KV [d_k, d_v] to memory:
[batch, chunks, heads, d_k, d_v] float32, four times the bytes of a bfloat16 q at d 128 and chunk 64.
For its forward pass at 64k tokens (b4 h32 d128 bf16) XLA:GPU plans 28 GiB of temporaries, for cuDNN's
flash attention none. Here, as in the paper's Triton kernel, one program per (batch, head, block of
value columns) walks the chunks in order with the state in registers, and writes nothing but its
outputs:

    forward:  O_c  = [(Q_c K_c^T) * M] V_c + L_q Q_c KV,           KV <- lambda^C KV + (L_k K_c)^T V_c
    dq:       dQ_c = [(dO_c V_c^T) * M] K_c + L_q dO_c KV^T         (chunks in order, the same KV)
    dk, dv:   dK_c = [(dO_c V_c^T) * M]^T Q_c + L_k V_c G^T,
              dV_c = [(Q_c K_c^T) * M]^T dO_c + L_k K_c G,          G <- lambda^C G + (L_q Q_c)^T dO_c
                                                                    (chunks in reverse, G = dLoss/dKV)

with M the decay mask lambda^(i-j) (i >= j), L_q = diag(lambda^(i+1)) and L_k = diag(lambda^(C-1-j)) within
a chunk. Dots take the inputs' dtype and accumulate in float32; KV and G stay float32 and are cast to
the inputs' dtype for their dots. On a GPU the kernels are Triton's (head sizes and the chunk powers of
two, 16 or more); elsewhere they run in Pallas' interpret mode (how the tests check them against the
other forms).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from scaling.nn.attention import compiling_for


def _tables(rate_ref, c: int):
    """Decay mask M [c, c], L_q and L_k as [c, 1] columns and lambda^C, from the head's rate row [c]."""
    rate = rate_ref[...]
    position = lax.broadcasted_iota(jnp.float32, (c,), 0)
    distance = position[:, None] - position[None, :]
    mask = jnp.where(distance >= 0, jnp.exp(-rate[:, None] * jnp.maximum(distance, 0.0)), 0.0)
    q_decay = jnp.exp(-rate * (position + 1))[:, None]
    k_decay = jnp.exp(-rate * (c - 1 - position))[:, None]
    return mask, q_decay, k_decay, jnp.exp(-jnp.max(rate) * c)


def _dot(a, b, dtype):
    """a @ b with operands in `dtype`, accumulated in float32."""
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32,
                   precision=lax.Precision.HIGHEST)


def _forward_kernel(rate_ref, q_ref, k_ref, v_ref, o_ref, *, c: int, n: int):
    """O for one block of value columns (the state KV [d_k, block] is theirs alone)."""
    mask, q_decay, k_decay, chunk_decay = _tables(rate_ref, c)
    dot = functools.partial(_dot, dtype=q_ref.dtype)

    def step(i, kv):
        rows = pl.ds(i * c, c)
        q, k, v = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :]
        o_ref[rows, :] = (dot(dot(q, k.T) * mask, v) + dot(q * q_decay, kv)).astype(o_ref.dtype)
        return chunk_decay * kv + dot((k * k_decay).T, v)

    lax.fori_loop(0, n, step, jnp.zeros((q_ref.shape[-1], v_ref.shape[-1]), jnp.float32))


def _dq_kernel(rate_ref, v_ref, do_ref, k_ref, dq_ref, *, c: int, n: int):
    """dQ for one block of key columns (the rows of KV [block, d_v] they make)."""
    mask, q_decay, k_decay, chunk_decay = _tables(rate_ref, c)
    dot = functools.partial(_dot, dtype=k_ref.dtype)

    def step(i, kv):
        rows = pl.ds(i * c, c)
        k, v, do = k_ref[rows, :], v_ref[rows, :], do_ref[rows, :]
        dq_ref[rows, :] = (dot(dot(do, v.T) * mask, k) + dot(do, kv.T) * q_decay).astype(dq_ref.dtype)
        return chunk_decay * kv + dot((k * k_decay).T, v)

    lax.fori_loop(0, n, step, jnp.zeros((k_ref.shape[-1], v_ref.shape[-1]), jnp.float32))


def _dk_dv_kernel(rate_ref, q_ref, k_ref, v_ref, do_ref, dk_ref, dv_ref, *, c: int, n: int):
    mask, q_decay, k_decay, chunk_decay = _tables(rate_ref, c)
    dot = functools.partial(_dot, dtype=q_ref.dtype)

    def step(t, g):
        rows = pl.ds((n - 1 - t) * c, c)
        q, k, v, do = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], do_ref[rows, :]
        dk_ref[rows, :] = (dot((dot(do, v.T) * mask).T, q) + dot(v, g.T) * k_decay).astype(dk_ref.dtype)
        dv_ref[rows, :] = (dot((dot(q, k.T) * mask).T, do) + dot(k * k_decay, g)).astype(dv_ref.dtype)
        return chunk_decay * g + dot((q * q_decay).T, do)

    lax.fori_loop(0, n, step, jnp.zeros((q_ref.shape[-1], v_ref.shape[-1]), jnp.float32))


COLUMN_BLOCK = 64


def _call(kernel, decay, c: int, whole: list, blocked: list, outputs: list) -> list:
    """`kernel` on a grid of programs per (batch, head, block of columns), each seeing its sequences
    [t, d] whole: `whole` with every column, `blocked` and the outputs by blocks of COLUMN_BLOCK columns
    (with no `blocked` input, one block of every column), as the paper's kernel splits the value
    columns for parallelism. The kernel also gets its head's rate -log(lambda) as a row of c equal
    entries (a vector it can load)."""
    batch, length, heads = whole[0].shape[:3]
    width = min(COLUMN_BLOCK, blocked[0].shape[-1]) if blocked else None
    rates = jnp.broadcast_to(-jnp.log(decay.astype(jnp.float32))[:, None], (heads, c))

    def sequences(x, columns=None):
        block = columns or x.shape[-1]
        return pl.BlockSpec((None, length, None, block), lambda b, h, j: (b, 0, h, j if columns else 0))

    return pl.pallas_call(
        functools.partial(kernel, c=c, n=length // c),
        grid=(batch, heads, blocked[0].shape[-1] // width if blocked else 1),
        in_specs=[pl.BlockSpec((None, c), lambda b, h, j: (h, 0))] + [sequences(x) for x in whole]
        + [sequences(x, width) for x in blocked],
        out_specs=[sequences(x, width) for x in outputs],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in outputs],
        compiler_params=pltriton.CompilerParams(num_warps=4),  # Triton, as the paper's kernel
        interpret=compiling_for() != "gpu",
    )(rates, *whole, *blocked)


def _padded(x, length: int):
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _padded_length(length: int, chunk_size: int) -> int:
    """Whole chunks of chunk_size tokens (Triton's blocks are powers of two), the tail zero-padded."""
    return -(-length // chunk_size) * chunk_size


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lightning(q, k, v, decay, chunk_size: int) -> jax.Array:
    """Causal decayed linear attention [batch, length, heads, d_v] (linear_attention.py's function)."""
    return _lightning_fwd(q, k, v, decay, chunk_size)[0]


def _lightning_fwd(q, k, v, decay, chunk_size):
    length = q.shape[1]
    q, k, v = (_padded(x, _padded_length(length, chunk_size)) for x in (q, k, v))
    (o,) = _call(_forward_kernel, decay, chunk_size, [q, k], [v], [v])
    return o[:, :length], (q, k, v, decay)


def _lightning_bwd(chunk_size, residuals, d_out):
    """dq, dk, dv by the two backward kernels; the decay is a constant of the model (zero cotangent)."""
    q, k, v, decay = residuals
    length = d_out.shape[1]
    d_out = _padded(d_out.astype(v.dtype), q.shape[1])
    (dq,) = _call(_dq_kernel, decay, chunk_size, [v, d_out], [k], [q])
    dk, dv = _call(_dk_dv_kernel, decay, chunk_size, [q, k, v, d_out], [], [k, v])
    return dq[:, :length], dk[:, :length], dv[:, :length], jnp.zeros_like(decay)


lightning.defvjp(_lightning_fwd, _lightning_bwd)
