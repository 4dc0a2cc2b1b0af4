"""Optimizer recipes. Each returns (optax transformation, learning-rate schedule) for a run of `total_steps`
at a peak learning rate of 1: the train step scales the updates by the run's peak rate, an array of the
train state (scaling/train/steps.py), so that a learning-rate search compiles one step, not one a rate.
optax's optimizers apply the rate last, to the whole update (decoupled weight decay included), so a
recipe at peak 1 scaled by the rate makes the updates the same recipe makes at that rate.
"""
import jax
import optax

from scaling.config import TrainConfig


def decay_mask(params):
    """Weight decay on matrices only (ndim >= 2); never on norm gains or other vectors."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def warmup_cosine(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to 1 over `warmup_frac` of the run, then cosine decay to 0 at `total_steps`."""
    warmup = max(1, round(cfg.warmup_frac * total_steps)) if cfg.warmup_frac > 0 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=1.0, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1)
    )


def adamw(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (b1 0.9, b2 0.95, eps 1e-8, decoupled decay on matrices), global-norm clipping, warmup + cosine."""
    schedule = warmup_cosine(cfg, total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask),
    )
    return tx, schedule
