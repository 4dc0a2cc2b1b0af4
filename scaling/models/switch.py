"""Switch Transformer: the baseline GPT with a top-1 MoE FFN in every `moe_every`-th block (REFERENCE.md 3).

Block l (0-based) is a Switch block when (l + 1) % moe_every == 0, so with the default 2 the MoE FFNs
sit in blocks 1, 3, 5, ... (Switch sec. 2: "every other FFN layer"): the stack's pattern is
moe_every - 1 GPT blocks then one Switch block, and the n_layers % moe_every blocks left over are
dense. Auxiliary losses sown by the Switch layers are averaged over them by the trainer.
"""
import dataclasses

import flax.linen as nn
import jax

from scaling import flops
from scaling.config import ArchOptions, ModelConfig, UsageError, option
from scaling.models.gpt import Block, gpt_counts
from scaling.nn.attention import CausalSelfAttention
from scaling.nn.lm import LanguageModel
from scaling.nn.moe import MoEOptions, SwitchFFN, capacity
from scaling.nn.norms import RMSNorm
from scaling.nn.stack import Context, layer_params, stack_params


@dataclasses.dataclass(frozen=True)
class SwitchOptions(MoEOptions):
    """The Switch layer's options and where its layers sit."""

    depth_flag = "--moe_every"
    moe_every: int = option(2, "Every k-th block has an MoE FFN (1: every block).")

    def validate(self, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if self.moe_every < 1:
            raise UsageError("--moe_every", "must be a positive integer (1: every block, 2: every other)")

    def min_layers(self) -> int:
        return self.moe_every


class SwitchBlock(nn.Module):
    """A pre-norm block whose FFN is a Switch layer: x += Attn(RMSNorm(x)); x += MoE(RMSNorm(x)).
    `noop_experts`: see SwitchFFN (integrated MoDE)."""

    config: ModelConfig
    noop_experts: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, context: Context) -> jax.Array:
        attn = CausalSelfAttention(self.config, name="attn")
        x = x + attn(RMSNorm(name="attn_norm")(x), context.positions, context.mask)
        moe = SwitchFFN(self.config, self.noop_experts, name="moe")
        x = x + moe(RMSNorm(name="mlp_norm")(x), context.train, context.mask)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def pattern(cfg: ModelConfig) -> tuple:
    return (Block,) * (cfg.options.moe_every - 1) + (SwitchBlock,)


def Switch(config: ModelConfig) -> LanguageModel:  # noqa: N802 (a model constructor, used like a class)
    """tokens [batch, length] -> float32 logits [batch, length, vocab]; the GPT with Switch FFNs."""
    return LanguageModel(config, pattern=pattern(config))


def moe_flops(cfg: ModelConfig, noop_experts: int = 0) -> float:
    """Training FLOPs per token a Switch FFN adds over the dense FFN it replaces: the router matmul
    (2 d (E + N), x3 for training), the dispatch and combine einsums at the training capacity C (2 E C d
    each forward and once more each backward, the one-hot mask taking no gradient: 8 E C d), minus the
    FFN of the tokens no expert computes, routing balanced: of a group's S tokens the experts compute
    those routed to the E real ones (E / (E + N) of them), at most their E x C slots (fewer than S when
    capacity_factor < 1). The FFN of a token an expert takes is the dense FFN already counted; the
    idle slots an expert computes on padding are not counted."""
    opts = cfg.options
    choices = opts.num_experts + noop_experts
    slots = opts.num_experts * capacity(opts.group_size, choices, opts.capacity_factor)
    computed = min(slots, opts.group_size * opts.num_experts / choices) / opts.group_size
    skipped = 6.0 * 3 * cfg.d_model * cfg.d_ff * (1.0 - computed)
    return 6.0 * cfg.d_model * choices + 8.0 * slots * cfg.d_model - skipped


def switch_counts(cfg: ModelConfig, noop_experts: int = 0) -> flops.Counts:
    """Parameter counts and training FLOPs per token of a Switch model (`noop_experts`: integrated MoDE).

    Active parameters: one expert per token plus the router [d, E + N]. FLOPs per token: the GPT count
    plus `moe_flops` per Switch layer.
    """
    opts = cfg.options
    dense = gpt_counts(cfg)
    moe_layers = cfg.n_layers // opts.moe_every
    router = cfg.d_model * (opts.num_experts + noop_experts)
    extra_experts = moe_layers * (opts.num_experts - 1) * 3 * cfg.d_model * cfg.d_ff
    return dataclasses.replace(
        dense,
        params=dense.params + extra_experts + moe_layers * router,
        nonembed_params=dense.nonembed_params + extra_experts + moe_layers * router,
        active_params=dense.params + moe_layers * router,
        flops_per_token=dense.flops_per_token + moe_layers * moe_flops(cfg, noop_experts),
    )


def dense_student_config(teacher: ModelConfig) -> ModelConfig:
    """The dense `gpt` of the teacher's shape (Switch sec. 4: distilling into the base model)."""
    return dataclasses.replace(teacher, arch="gpt", options=ArchOptions())


def dense_student_params(teacher_cfg: ModelConfig, teacher, student_cfg: ModelConfig, student):
    """The student's parameters with every teacher weight outside the experts copied in (embeddings,
    head, norms, attention, and the FFNs of the dense blocks; Switch blocks' FFNs keep the student's)."""
    layers = zip(layer_params(student["blocks"], student_cfg.n_layers, 1),
                 layer_params(teacher["blocks"], teacher_cfg.n_layers, teacher_cfg.options.moe_every))
    merged = [{**own, **{name: value for name, value in taught.items() if name != "moe"}} for own, taught in layers]
    blocks = stack_params(merged, 1, scanned=student_cfg.scan_layers)
    return {**student, **{name: teacher[name] for name in ("embed", "head", "final_norm")}, "blocks": blocks}
