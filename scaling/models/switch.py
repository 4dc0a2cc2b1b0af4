"""Switch Transformer: the baseline GPT with a top-1 MoE FFN in every `moe_every`-th block (REFERENCE.md 3).

Block l (0-based) is a Switch block when (l + 1) % moe_every == 0, so with the default 2 the MoE FFNs
sit in blocks 1, 3, 5, ... (Switch sec. 2: "every other FFN layer"). A scanned stack scans a group of
moe_every blocks (moe_every - 1 dense ones, then the Switch block), n_layers // moe_every times; the
n_layers % moe_every dense blocks left over run after it, unrolled. Auxiliary losses sown by the
Switch layers are averaged over them by the trainer.
"""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax

from scaling import flops
from scaling.config import ModelConfig
from scaling.models.gpt import GPT, Block
from scaling.nn.attention import CausalSelfAttention
from scaling.nn.moe import SwitchFFN, capacity
from scaling.nn.norms import RMSNorm
from scaling.nn.stack import REMAT_POLICIES


class SwitchBlock(nn.Module):
    """A pre-norm block whose FFN is a Switch layer: x += Attn(RMSNorm(x)); x += MoE(RMSNorm(x))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        x = x + CausalSelfAttention(self.config, name="attn")(RMSNorm(name="attn_norm")(x), positions)
        x = x + SwitchFFN(self.config, name="moe")(RMSNorm(name="mlp_norm")(x), train)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _Group(nn.Module):
    """`dense` GPT blocks, then one Switch block if `moe`; (x, positions) -> (x, None) for nn.scan."""

    config: ModelConfig
    train: bool
    dense: int
    moe: bool

    @nn.compact
    def __call__(self, x, positions):
        for i in range(self.dense):
            x = Block(self.config, name=f"dense_{i}")(x, positions, self.train)
        if self.moe:
            x = SwitchBlock(self.config, name="switch")(x, positions, self.train)
        return x, None


class SwitchStack(nn.Module):
    """n_layers blocks with a Switch FFN in every moe_every-th one, scanned by groups or unrolled."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        repeats, tail = divmod(cfg.n_layers, cfg.moe_every)
        group = _Group
        if cfg.remat != "none":
            group = nn.remat(group, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            scanned = nn.scan(
                group,
                variable_axes={"params": 0, "aux_loss": 0, "metrics": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=repeats,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = scanned(cfg, train, cfg.moe_every - 1, True, name="groups")(x, positions)
        else:
            for g in range(repeats):
                x, _ = group(cfg, train, cfg.moe_every - 1, True, name=f"group_{g}")(x, positions)
        if tail:
            x, _ = group(cfg, train, tail, False, name="tail")(x, positions)
        return x


class Switch(GPT):
    """tokens [batch, length] -> float32 logits [batch, length, vocab]; the GPT with Switch FFNs."""

    stack: Callable[..., nn.Module] = SwitchStack


def switch_counts(cfg: ModelConfig) -> flops.Counts:
    """Parameter counts and training FLOPs per token of a Switch model.

    Active parameters: one expert per token plus the router [d, E]. FLOPs per token: the GPT count
    with each Switch layer's FFN counted once (active parameters; the idle capacity slots an expert
    computes on padding are not counted), plus the router matmul (2 d E, x3 for training), plus the
    dispatch and combine einsums at the training capacity C: 2 E C d each forward, and one more time
    each backward (the one-hot mask takes no gradient), i.e. 8 E C d per token per Switch layer.
    """
    dense = flops.gpt_counts(cfg)
    d, experts = cfg.d_model, cfg.num_experts
    moe_layers = cfg.n_layers // cfg.moe_every
    mlp = 3 * d * cfg.d_ff
    router = d * experts
    extra_experts = moe_layers * (experts - 1) * mlp
    slots = experts * capacity(cfg.group_size, experts, cfg.capacity_factor)
    flops_per_token = dense.flops_per_token + moe_layers * (6.0 * router + 8.0 * slots * d)
    return dataclasses.replace(
        dense,
        params=dense.params + extra_experts + moe_layers * router,
        nonembed_params=dense.nonembed_params + extra_experts + moe_layers * router,
        active_params=dense.params + moe_layers * router,
        flops_per_token=flops_per_token,
    )
