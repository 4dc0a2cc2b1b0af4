"""Mixture-of-Depths (Raposo et al. 2024, arXiv 2404.02258): the baseline GPT with every
`route_every`-th block (default 2: blocks 1, 3, 5, ..., the paper's best "every other block") behind
an expert-choice router that sends each sequence's top `mod_capacity` x T tokens through it
(scaling/nn/mod.py; REFERENCE.md section 4). The other blocks are plain GPT blocks.

FLOPs: a routed block counts at its capacity c: its projections and MLP x c, its attention scores x
c^2 (the k x k square), plus its router and predictor; so at a fixed budget the isoFLOP planner gives
MoD larger models than GPT, which is the paper's point.
"""
import dataclasses
import functools

from scaling import flops
from scaling.config import ModelConfig
from scaling.models.gpt import Block, block_flops, gpt_counts
from scaling.nn.lm import LanguageModel
from scaling.nn.mod import RoutedBlock, routed_fraction, routing_flops, routing_params


def routed(block) -> functools.partial:
    """`block` behind a Mixture-of-Depths router."""
    return functools.partial(RoutedBlock, block=block)


def MoD(config: ModelConfig) -> LanguageModel:  # noqa: N802 (a model constructor, used like a class)
    """tokens [batch, length] -> float32 logits [batch, length, vocab]; route_every - 1 GPT blocks,
    then a routed one, repeated."""
    every = config.options.route_every
    return LanguageModel(config, pattern=(Block,) * (every - 1) + (routed(Block),))


def mod_counts(cfg: ModelConfig) -> flops.Counts:
    """The GPT count with each routed block at its capacity (`block_flops(cfg, c)`) plus its router
    and predictor (`routing_flops`); the gathers and scatters of the routed tokens are not counted."""
    dense = gpt_counts(cfg)
    layers = cfg.n_layers // cfg.options.route_every
    extra = layers * routing_params(cfg)
    saved = block_flops(cfg) - block_flops(cfg, routed_fraction(cfg)) - routing_flops(cfg)
    return dataclasses.replace(
        dense,
        params=dense.params + extra,
        nonembed_params=dense.nonembed_params + extra,
        active_params=dense.params + extra,
        flops_per_token=dense.flops_per_token - layers * saved,
    )
