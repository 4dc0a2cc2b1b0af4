"""The one layer stack of every architecture: a repeating pattern of block types, scanned or unrolled.

A stack of n_layers blocks is `prefix` (blocks applied once, first) followed by `pattern` repeated:
layer l >= len(prefix) is pattern[(l - len(prefix)) % len(pattern)]. With `scan_layers` the repeats
are one `nn.scan` over a 'layers' axis, looped (the pattern compiles once) or unrolled (`unrolls`);
the last (n_layers - len(prefix)) % len(pattern) layers, a `tail` that takes the first blocks of the
pattern, run after it, unrolled.
The scan carries every collection a block uses: params, sown aux losses and metrics, and the decoding
cache. `separate_repeats` lays scanned parameters out for separate layers (scaling.sample decodes so).

A block is built as `block(config, name=...)` and called as `block(x, context) -> x`; the
`Context` gives it the token positions, its own layer index (a traced integer when scanned: per-layer
constants such as TNL's decays are looked up with it) and the call's mode.
"""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig


def matmuls_saveable(primitive, *args, **params) -> bool:
    """Keep the outputs of matrix products: dot_general and fused attention kernels (cuDNN's
    dot_product_attention primitives, whose outputs and softmax statistics its backward reads)."""
    return jax.checkpoint_policies.dots_saveable(primitive, *args, **params) or primitive.name.startswith(
        "dot_product_attention")


REMAT_POLICIES = {
    "none": matmuls_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": None,
}

Block = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class Context:
    """What every block is called with besides the hidden states.

    positions: [batch, length] true token positions (RoPE and routed blocks use them).
    layer: this block's index in the stack.
    train: training mode (dropout, router jitter).
    autoregressive: compute every position as sampling does, from it and earlier tokens only
        (blocks that route by a per-sequence top-k switch to their causal predictor).
    mask: [batch, length] tokens actually present in this block (None: all); the others neither
        attend nor are attended to (a routed block's threshold pass).
    """

    positions: jax.Array
    layer: int | jax.Array
    train: bool = False
    autoregressive: bool = False
    mask: jax.Array | None = None

    def replace(self, **changes) -> "Context":
        return dataclasses.replace(self, **changes)


class _Period(nn.Module):
    """One pass through `blocks` in order, in the (carry, per-repeat input) -> (carry, None) form of nn.scan."""

    blocks: tuple[Block, ...]
    config: ModelConfig
    train: bool
    autoregressive: bool

    @nn.compact
    def __call__(self, x, positions, first_layer):
        for j, block in enumerate(self.blocks):
            context = Context(positions, first_layer + j, self.train, self.autoregressive)
            x = block(self.config, name=f"block_{j}")(x, context)
        return x, None


class Stack(nn.Module):
    """n_layers blocks: `prefix`, then `pattern` repeated (scanned or unrolled), then its tail."""

    config: ModelConfig
    pattern: tuple[Block, ...]
    prefix: tuple[Block, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, train: bool, autoregressive: bool) -> jax.Array:
        cfg = self.config
        period = _remat(cfg)
        mode = (cfg, train, autoregressive)
        for i, block in enumerate(self.prefix):
            x, _ = period((block,), *mode, name=f"prefix_{i}")(x, positions, i)
        first = len(self.prefix)
        repeats, tail = divmod(cfg.n_layers - first, len(self.pattern))
        if cfg.scan_layers and repeats:
            scanned = nn.scan(
                period,
                variable_axes={"params": 0, "aux_loss": 0, "metrics": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, 0),
                length=repeats,
                unroll=repeats if unrolls(cfg) else 1,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            layers = first + len(self.pattern) * jnp.arange(repeats)
            x, _ = scanned(self.pattern, *mode, name="layers")(x, positions, layers)
        else:
            for r in range(repeats):
                x, _ = period(self.pattern, *mode, name=f"layers_{r}")(x, positions, first + r * len(self.pattern))
        if tail:
            x, _ = period(self.pattern[:tail], *mode, name="tail")(x, positions, cfg.n_layers - tail)
        return x


def _remat(cfg: ModelConfig):
    """_Period with what its backward pass keeps from the forward pass chosen by `cfg.remat`: none keeps
    every matmul output, dots the weight matmuls' (attention's recomputed), full the block's input.

    Even with none, a looped scan's period recomputes its elementwise work (norms, activations,
    softmax) from the matmul outputs: whatever a loop keeps crosses its boundary and is stacked, layer
    by layer, into buffers XLA zero-fills first, which costs more than the recomputation XLA fuses
    into the backward pass (halved temporary memory and a 0-10% faster step on the CPU). Unrolled
    (separate layers or an unrolled scan), XLA sees the whole graph and places every intermediate
    itself, and recomputation must be kept from merging back into the forward pass (prevent_cse):
    without it, remat full on an unrolled 350M step planned 61.0 GiB instead of 16.8.
    """
    remat = "none" if cfg.remat == "auto" else cfg.remat  # auto is chosen by scaling/train/fitting.py
    looped = cfg.scan_layers and not unrolls(cfg)
    if remat == "none" and not looped:
        return _Period
    return nn.remat(_Period, policy=REMAT_POLICIES[remat], prevent_cse=not looped)


def unrolls(cfg: ModelConfig, platform: str | None = None) -> bool:
    """Whether the scan over the layers is unrolled: `cfg.unroll_layers`, or where that is None (the
    default) whether `platform` (default: jax's default backend; a Run passes its devices') is a GPU
    or a CPU.

    The parameters keep their stacked layout either way. Looped, a step moves more bytes: each
    layer's saved activations are copied into stacked buffers that are zero-filled first and sliced
    again in the backward pass (README, Performance: XLA:GPU's plan at the roofline, 14-19% of the
    step; unrolled, it equals that of separate layers; MaxText's GPU configs unroll too). On the
    CPUs measured, separate layers were 0-5% faster; on an AVX2-only Zen 3, with freed memory kept
    (scaling/host_memory.py), unrolled steps took 2.7-4.1% less time (gpt, ngpt, switch, mod) and 11%
    (tnl). Compile time grows with depth: +0.6 s from 4 to 12 layers of the bench shape. TPUs loop
    (not measured; MaxText loops there).
    """
    if cfg.unroll_layers is not None:
        return cfg.unroll_layers
    return (platform or jax.default_backend()) in ("gpu", "cpu")


def layer_params(blocks: dict, n_layers: int, period: int, prefix: int = 0) -> list[dict]:
    """The parameters of each layer of a Stack's parameter tree `blocks`, in layer order (scanned or not)."""
    layers = [blocks[f"prefix_{i}"]["block_0"] for i in range(prefix)]
    repeats, tail = divmod(n_layers - prefix, period)
    for r in range(repeats):
        repeat = jax.tree.map(lambda x, r=r: x[r], blocks["layers"]) if "layers" in blocks else blocks[f"layers_{r}"]
        layers += [repeat[f"block_{j}"] for j in range(period)]
    return layers + [blocks["tail"][f"block_{j}"] for j in range(tail)]


def stack_params(layers: list[dict], period: int, prefix: int = 0, scanned: bool = True) -> dict:
    """The inverse of `layer_params`: a Stack's parameter tree from each layer's parameters."""
    blocks = {f"prefix_{i}": {"block_0": layers[i]} for i in range(prefix)}
    body = layers[prefix:]
    repeats, tail = divmod(len(body), period)
    repeated = [{f"block_{j}": body[r * period + j] for j in range(period)} for r in range(repeats)]
    if scanned and repeats:
        blocks["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *repeated)
    else:
        blocks.update({f"layers_{r}": repeat for r, repeat in enumerate(repeated)})
    if tail:
        blocks["tail"] = {f"block_{j}": body[repeats * period + j] for j in range(tail)}
    return blocks


def separate_repeats(blocks: dict) -> dict:
    """A Stack's parameter tree `blocks` in the layout of separate layers (scan_layers False): the
    scanned repeats, stacked along a leading axis under 'layers', split into layers_0, layers_1, ..."""
    if "layers" not in blocks:
        return blocks
    repeats = jax.tree.leaves(blocks["layers"])[0].shape[0]
    separate = {f"layers_{r}": jax.tree.map(lambda x, r=r: x[r], blocks["layers"]) for r in range(repeats)}
    return {**{name: tree for name, tree in blocks.items() if name != "layers"}, **separate}
