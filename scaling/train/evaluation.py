"""Evaluation on a fixed set of held-out batches: the mean LM losses and bits per byte."""
import math

import jax
import numpy as np

from scaling import data, sharding
from scaling.train.run import Run

EVAL_SEED = 1234


def _mean_loss(sums: list) -> float:
    """The mean token loss of per-batch (sum of losses, tokens) pairs."""
    total, count = np.sum(sums, axis=0)
    return float(total / max(count, 1.0))


class Evaluator:
    """Mean LM losses over a fixed set of held-out batches (the same batches at every evaluation):
    eval_loss, and where the training pass looks ahead (ArchOptions.looks_ahead) eval_causal_loss, of
    the pass sampling takes; and bits per byte: loss / ln 2 / the eval split's UTF-8 bytes per token
    (None for token data)."""

    def __init__(self, run: Run):
        loader = run.loader("eval", seed=EVAL_SEED)
        self.batches = [loader(i) for i in range(run.train_cfg.eval_batches)]
        self.steps = {"eval_loss": run.eval_step()}
        if run.model_cfg.options.looks_ahead:
            self.steps["eval_causal_loss"] = run.eval_step(autoregressive=True)
        self.mesh = run.mesh
        self.bytes_per_token = data.bytes_per_token(run.train_cfg.data, "eval", **run.data_options)

    def __call__(self, params) -> dict[str, float]:
        with sharding.activate(self.mesh):
            sums = {name: [step(params, batch) for batch in self.batches] for name, step in self.steps.items()}
        return {name: _mean_loss(jax.device_get(parts)) for name, parts in sums.items()}

    def bits_per_byte(self, loss: float | None) -> float | None:
        return None if loss is None or self.bytes_per_token is None else loss / math.log(2) / self.bytes_per_token
