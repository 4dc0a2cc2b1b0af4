"""Architectures by name: everything the generic trainer, sweep, sampler and FLOP accounting need.

Adding an architecture means writing its files (scaling/nn/<layer>.py if it needs a new layer,
scaling/models/<name>.py with its blocks, model, options and counts) and adding one entry to
ARCHITECTURES; nothing else names it (README, "Adding an architecture").
"""
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import optax

from scaling import flops, optimizers, sharding
from scaling.config import ArchOptions, ModelConfig, TrainConfig, UsageError
from scaling.models import gpt, mod, mode, ngpt, switch, tnl
from scaling.nn import moe
from scaling.nn.mod import MoDOptions


@dataclasses.dataclass(frozen=True)
class Distillation:
    """How a run of this architecture seeds a dense student (Switch sec. 4): the student's config,
    and its initial parameters (student_params(teacher_cfg, teacher, student_cfg, student))."""

    student_config: Callable[[ModelConfig], ModelConfig]
    student_params: Callable[[ModelConfig, Any, ModelConfig, Any], Any]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One architecture: its model and counts, and the hooks the generic code calls.

    options: its ArchOptions subclass (fields become flags; min_layers bounds the size family).
    optimizer: (TrainConfig, total steps) -> (optax transformation, schedule), both at a peak learning
        rate of 1 (the train step scales the updates by the run's; scaling/optimizers.py).
    post_step: params -> params after every optimizer step and at init (nGPT's renormalisation).
    check_mesh: (mesh, config, batch size) -> None, a UsageError if the layout does not divide.
    distillation: how its runs seed a dense student (experiments/distill.py), or None.
    claim: its paper's headline claim against a dense baseline (REFERENCE.md), shown beside the
        measured comparison in experiments.report.
    """

    name: str
    model: Callable[[ModelConfig], nn.Module]
    counts: Callable[[ModelConfig], flops.Counts]
    options: type[ArchOptions] = ArchOptions
    optimizer: Callable[[TrainConfig, int], tuple[optax.GradientTransformation, optax.Schedule]] = optimizers.adamw
    post_step: Callable[[Any], Any] | None = None
    check_mesh: Callable[[Any, ModelConfig, int], None] | None = None
    distillation: Distillation | None = None
    claim: str = ""

    def check_fits(self, mesh, cfg: ModelConfig, batch_size: int) -> None:
        """UsageError unless the model and batch divide evenly over the mesh."""
        sharding.check_fits(mesh, cfg, batch_size)
        if self.check_mesh is not None:
            self.check_mesh(mesh, cfg, batch_size)


ARCHITECTURES = {
    "gpt": Architecture("gpt", gpt.GPT, gpt.gpt_counts),
    "ngpt": Architecture("ngpt", ngpt.NGPT, ngpt.ngpt_counts, optimizer=ngpt.optimizer,
                         post_step=ngpt.normalize_matrices,
                         claim="same loss in 4x / 10x / 20x fewer tokens at context 1k / 4k / 8k (0.5-1B)"),
    "switch": Architecture("switch", switch.Switch, switch.switch_counts, switch.SwitchOptions,
                           check_mesh=moe.check_mesh,
                           distillation=Distillation(switch.dense_student_config, switch.dense_student_params),
                           claim="T5-Base's quality ~7.5x faster in steps, 7x in wall time (64 experts)"),
    "tnl": Architecture("tnl", tnl.TNL, tnl.tnl_counts, tnl.TNLOptions,
                        claim="lower loss than a Transformer at 385M (2.248 vs 2.362)"),
    "mod": Architecture("mod", mod.MoD, mod.mod_counts, MoDOptions,
                        claim="isoFLOP optimum lower (up to ~1.5%) and with more parameters ('down and to the "
                              "right'); baseline quality with 66% faster steps"),
    "mode": Architecture("mode", mode.MoDE, mode.mode_counts, mode.MoDEOptions, check_mesh=mode.check_mesh),
}


def get_architecture(name: str) -> Architecture:
    """The registered architecture `name`, or a UsageError naming the valid ones."""
    if name not in ARCHITECTURES:
        raise UsageError("--arch", f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def model_config(arch: str = "gpt", **fields) -> ModelConfig:
    """A ModelConfig of `arch` from flat fields: the generic ones and its options' (defaults elsewhere)."""
    options_type = get_architecture(arch).options
    own = {f.name for f in dataclasses.fields(options_type)}
    options = options_type(**{k: v for k, v in fields.items() if k in own})
    return ModelConfig(arch=arch, options=options, **{k: v for k, v in fields.items() if k not in own})


def model_config_from_dict(record: dict) -> ModelConfig:
    """The inverse of dataclasses.asdict(ModelConfig) (config.json, plan.json)."""
    options = get_architecture(record["arch"]).options(**record.get("options", {}))
    return ModelConfig(**{**record, "options": options})
