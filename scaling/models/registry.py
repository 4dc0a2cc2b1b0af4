"""Architectures by name: the model, its FLOP accounting, its optimizer recipe and post-step hook.

Adding an architecture means adding one entry to ARCHITECTURES; the trainer, sweep, benchmark and
FLOP accounting pick it up from here.
"""
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import optax

from scaling import flops
from scaling.config import ModelConfig, TrainConfig, UsageError
from scaling.models.gpt import GPT
from scaling.models.ngpt import NGPT, ngpt_counts, normalize_matrices
from scaling.models.switch import Switch, switch_counts
from scaling.models.tnl import TNL, tnl_counts
from scaling.train import optimizers


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the generic trainer needs to know about one architecture."""

    name: str
    model: Callable[[ModelConfig], nn.Module]
    counts: Callable[[ModelConfig], flops.Counts]
    optimizer: Callable[[TrainConfig, int], tuple[optax.GradientTransformation, optax.Schedule]] = optimizers.adamw
    post_step: Callable[[Any], Any] | None = None


ARCHITECTURES = {
    "gpt": Architecture("gpt", GPT, flops.gpt_counts),
    "ngpt": Architecture("ngpt", NGPT, ngpt_counts, optimizers.ngpt, normalize_matrices),
    "switch": Architecture("switch", Switch, switch_counts),
    "tnl": Architecture("tnl", TNL, tnl_counts),
}


def get_architecture(name: str) -> Architecture:
    """The registered architecture `name`, or a UsageError naming the valid ones."""
    if name not in ARCHITECTURES:
        raise UsageError("--arch", f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]
