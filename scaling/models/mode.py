"""Mixture-of-Depths-and-Experts (MoDE; Raposo et al. 2024, arXiv 2404.02258, sec. 3.6), two variants:

- staged: MoD routing around a block whose FFN is the Switch MoE. Layer l has a Switch FFN when
  (l + 1) % moe_every == 0 and is behind a MoD router when (l + 1) % route_every == 0 (the defaults,
  2 and 2, make blocks 1, 3, 5, ... routed Switch blocks and the others plain GPT blocks).
- integrated: no MoD router; each Switch layer's router chooses among the `num_experts` experts and
  `noop_experts` no-op experts, and a token sent to a no-op expert skips the FFN (scaling/nn/moe.py).

Both reuse the Switch layer, its losses and its expert parallelism; the paper calls these results
preliminary.
"""
import dataclasses
import functools
import math

from scaling import flops
from scaling.config import ModelConfig, UsageError, check_choice, option
from scaling.models.gpt import Block, block_flops
from scaling.models.mod import routed
from scaling.models.switch import SwitchBlock, SwitchOptions, moe_flops, switch_counts
from scaling.nn import moe
from scaling.nn.lm import LanguageModel
from scaling.nn.mod import MoDOptions, routed_fraction, routed_tokens, routing_flops, routing_params

VARIANTS = ("staged", "integrated")


@dataclasses.dataclass(frozen=True)
class MoDEOptions(SwitchOptions, MoDOptions):
    """The Switch and MoD options, the variant, and the no-op experts of the integrated one."""

    mode_variant: str = option("staged", "MoDE variant: MoD routing around Switch blocks (staged), or no-op "
                                         "experts among the Switch experts (integrated).", VARIANTS)
    noop_experts: int = option(0, "No-op experts beside the real ones (integrated MoDE: a token sent to one skips "
                                  "the FFN).")

    @property
    def depth_flag(self) -> str:
        return "--route_every" if self.staged and self.route_every > self.moe_every else "--moe_every"

    @property
    def staged(self) -> bool:
        return self.mode_variant == "staged"

    @property
    def looks_ahead(self) -> bool:
        return self.staged  # MoD's top-k; integrated MoDE routes each token by its own router

    def min_layers(self) -> int:
        return max(self.moe_every, self.route_every) if self.staged else self.moe_every

    def validate(self, cfg: ModelConfig) -> None:
        check_choice(self.mode_variant, "mode_variant", VARIANTS)
        super().validate(cfg)
        if self.staged and self.noop_experts:
            raise UsageError("--noop_experts", "only --mode_variant integrated has no-op experts; set it or drop them")
        if not self.staged and self.noop_experts < 1:
            raise UsageError("--noop_experts", "integrated MoDE needs at least one no-op expert (e.g. --noop_experts 8)")


def _layer_kinds(cfg: ModelConfig, layer: int) -> tuple[bool, bool]:
    """(has a Switch FFN, is routed) of a staged MoDE layer."""
    opts = cfg.options
    return (layer + 1) % opts.moe_every == 0, (layer + 1) % opts.route_every == 0


def pattern(cfg: ModelConfig) -> tuple:
    opts = cfg.options
    if not opts.staged:
        return (Block,) * (opts.moe_every - 1) + (functools.partial(SwitchBlock, noop_experts=opts.noop_experts),)
    blocks = []
    for layer in range(math.lcm(opts.moe_every, opts.route_every)):
        experts, is_routed = _layer_kinds(cfg, layer)
        block = SwitchBlock if experts else Block
        blocks.append(routed(block) if is_routed else block)
    return tuple(blocks)


def MoDE(config: ModelConfig) -> LanguageModel:  # noqa: N802 (a model constructor, used like a class)
    """tokens [batch, length] -> float32 logits [batch, length, vocab]."""
    return LanguageModel(config, pattern=pattern(config))


def mode_counts(cfg: ModelConfig) -> flops.Counts:
    """Integrated: the Switch count with no-op experts. Staged: the Switch count with each routed layer
    at its capacity c (its projections, FFN, Switch router and dispatch x c, its attention x c^2) plus
    its MoD router and predictor (scaling/models/mod.py)."""
    opts = cfg.options
    if not opts.staged:
        return switch_counts(cfg, opts.noop_experts)
    base, c = switch_counts(cfg), routed_fraction(cfg)
    saved, extra = 0.0, 0
    for layer in range(cfg.n_layers):
        experts, is_routed = _layer_kinds(cfg, layer)
        if is_routed:
            full = block_flops(cfg) + (moe_flops(cfg) if experts else 0.0)
            saved += full - (block_flops(cfg, c) + (c * moe_flops(cfg) if experts else 0.0) + routing_flops(cfg))
            extra += routing_params(cfg)
    return dataclasses.replace(
        base,
        params=base.params + extra,
        nonembed_params=base.nonembed_params + extra,
        active_params=base.active_params + extra,
        flops_per_token=base.flops_per_token - saved,
    )


def check_mesh(mesh, cfg: ModelConfig, batch_size: int) -> None:
    """The Switch layout checks for full sequences and, staged, for the k routed tokens of each."""
    moe.check_mesh(mesh, cfg, batch_size)
    if cfg.options.staged:
        moe.check_mesh(mesh, cfg.replace(seq_len=routed_tokens(cfg.options.mod_capacity, cfg.seq_len)), batch_size)
