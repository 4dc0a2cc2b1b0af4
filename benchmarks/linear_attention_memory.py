"""Peak memory of the gradient of causal decayed linear attention versus sequence length.

python benchmarks/linear_attention_memory.py [--lengths 1024,4096,16384] [--layers 4]

Compares, for a stack of `--layers` attention layers x <- x + attn(silu(x), silu(-x), x) (q, k and v
depend on the layer's input, as in a model, so saved residuals accumulate over layers), the XLA-reported memory (temporaries + arguments) of the compiled
gradient of: the parallel T x T form, the chunked form differentiated by autodiff, and the chunked
form with the Lightning Attention-2 custom VJP; and, per layer, the residuals each form saves for its
backward pass (what accumulates over the layers of a model during training). Deterministic (shape and
compiler analysis), nothing is run.
"""
import argparse

import jax
import jax.numpy as jnp

from scaling.models.tnl import layer_decays
from scaling.nn.linear_attention import _chunked_forward, linear_attention

FORMS = {
    "parallel": lambda q, k, v, decay, c: linear_attention(q, k, v, decay, form="parallel"),
    "chunked (autodiff)": _chunked_forward,
    "chunked (custom VJP)": lambda q, k, v, decay, c: linear_attention(q, k, v, decay, chunk_size=c),
}


def peak_mib(attention, length, layers, heads, d_head, chunk) -> float:
    """Temporaries + arguments of the compiled gradient, in MiB."""
    decays = jnp.asarray(layer_decays(heads, layers))

    def loss(x):
        for layer in range(layers):
            x = x + attention(jax.nn.silu(x), jax.nn.silu(-x), x, decays[layer], chunk)
        return jnp.sum(x)

    shape = jax.ShapeDtypeStruct((1, length, heads, d_head), jnp.float32)
    memory = jax.jit(jax.grad(loss)).lower(shape).compile().memory_analysis()
    return (memory.temp_size_in_bytes + memory.argument_size_in_bytes) / 2**20


def residual_mib(attention, length, heads, d_head, chunk) -> float:
    """Bytes one layer keeps from its forward pass for its backward pass, in MiB."""
    decay = jnp.asarray(layer_decays(heads, 1)[0])
    shape = jax.ShapeDtypeStruct((1, length, heads, d_head), jnp.float32)
    saved = jax.eval_shape(lambda q, k, v: jax.vjp(lambda *a: attention(*a, decay, chunk), q, k, v)[1], shape, shape, shape)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(saved)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d_head", type=int, default=64)
    parser.add_argument("--chunk_size", type=int, default=64)
    parser.add_argument("--skip_parallel_above", type=int, default=8192, help="The T x T form gets too big.")
    args = parser.parse_args()
    print("| T | " + " | ".join(f"{name}: saved per layer / peak of {args.layers} layers (MiB)" for name in FORMS) + " |")
    print("|---" * (len(FORMS) + 1) + "|")
    for length in map(int, args.lengths.split(",")):
        cells = []
        for name, attention in FORMS.items():
            if name == "parallel" and length > args.skip_parallel_above:
                cells.append("-")
                continue
            saved = residual_mib(attention, length, args.heads, args.d_head, args.chunk_size)
            peak = peak_mib(attention, length, args.layers, args.heads, args.d_head, args.chunk_size)
            cells.append(f"{saved:.1f} / {peak:.0f}")
        print(f"| {length} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
