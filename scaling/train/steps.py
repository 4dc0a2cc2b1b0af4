"""Pure train and eval steps shared by every architecture, and the losses they minimise.

The default loss is the LM cross-entropy plus every auxiliary loss a layer sows into the 'aux_loss'
collection (averaged over the layers that sow it); each is reported by name, as are the scalars sown
into 'metrics'. The LM loss alone is what evaluation and isoFLOP fits use. A loss is a callable
(model, params, frozen, batch, rng) -> (scalar, metrics) with a `frozen` attribute: arrays it reads
but never trains (a distillation teacher's parameters), passed to the step as an argument.
"""
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scaling.train.cross_entropy import cross_entropy
from scaling.train.state import TrainState

AUX_COLLECTIONS = ("aux_loss", "metrics")


class Loss(Protocol):
    frozen: Any

    def __call__(self, model, params, frozen, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]: ...


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted next-token cross-entropies, sum of weights)."""
    losses = cross_entropy(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)


def named_means(collection) -> dict[str, jax.Array]:
    """{name: mean over every layer that sowed `name`}, scanned (stacked) or unrolled alike."""
    values = {}
    for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
        name = [k.key for k in path if hasattr(k, "key")][-1]
        values.setdefault(name, []).append(jnp.ravel(value))
    return {name: jnp.mean(jnp.concatenate(parts)) for name, parts in values.items()}


def apply_for_training(model, params, inputs: jax.Array, rng: jax.Array) -> tuple[jax.Array, dict, dict]:
    """(logits, {aux loss name: mean}, {metric name: mean}) of the model in training mode."""
    logits, sown = model.apply({"params": params}, inputs, train=True, rngs={"dropout": rng}, mutable=AUX_COLLECTIONS)
    return logits, named_means(sown.get("aux_loss", {})), named_means(sown.get("metrics", {}))


class LMLoss:
    """Mean next-token cross-entropy plus the sown auxiliary losses (reported as `loss` and by name)."""

    frozen = None

    def __call__(self, model, params, frozen, batch, rng):
        del frozen
        logits, aux, metrics = apply_for_training(model, params, batch["inputs"], rng)
        total, count = token_cross_entropy(logits, batch["targets"], batch["weights"])
        lm_loss = total / jnp.maximum(count, 1.0)
        return lm_loss + sum(aux.values()), {"loss": lm_loss, **aux, **metrics}


def split_microbatches(x: jax.Array, microbatches: int) -> jax.Array:
    """[batch, ...] -> [microbatches, batch / microbatches, ...], microbatch i = rows i, i + m, i + 2m, ...
    so that every microbatch spans every batch shard (each device holds a slice of each)."""
    rows = x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(rows, (None, "batch") + (None,) * (x.ndim - 1))


def make_train_step(model, tx: optax.GradientTransformation, loss: Loss, post_step: Callable | None = None,
                    microbatches: int = 1):
    """(state, batch, frozen) -> (state, metrics): one optimizer step, then the architecture's post-step hook.

    `tx` makes the updates of a peak learning rate of 1 (scaling/optimizers.py); the step scales them by
    the state's learning rate and draws its randomness from the state's seed and step, so that neither
    is a constant of the compiled program.

    With `microbatches` m > 1 the gradient is accumulated (in float32, a lax.scan) over m slices of the
    batch and averaged, as are the metrics: the same step as the whole batch when every slice holds
    as many target tokens (always, except for padded data), with a fraction of its activation memory.
    """

    def gradients(params, batch, frozen, rng):
        return jax.grad(lambda p: loss(model, p, frozen, batch, rng), has_aux=True)(params)

    def accumulated(params, batch, frozen, rng):
        micro = jax.tree.map(lambda x: split_microbatches(x, microbatches), batch)

        def add(total, index_and_batch):
            index, batch_slice = index_and_batch
            step = gradients(params, batch_slice, frozen, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, total, step), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(gradients, params, first, frozen, rng))
        total, _ = jax.lax.scan(add, zeros, (jnp.arange(microbatches), micro))
        return jax.tree.map(lambda x: x / microbatches, total)

    def train_step(state: TrainState, batch, frozen):
        rng = jax.random.fold_in(jax.random.key(state.seed), state.step)
        step_gradients = gradients if microbatches == 1 else accumulated
        grads, metrics = step_gradients(state.params, batch, frozen, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.learning_rate.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        if post_step is not None:
            params = post_step(params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model, autoregressive: bool = False):
    """(params, batch) -> (sum of token losses, number of tokens), for exact means over many batches;
    `autoregressive`: of the pass sampling takes (every position from it and earlier tokens only)."""

    def eval_step(params, batch):
        logits = model.apply({"params": params}, batch["inputs"], autoregressive=autoregressive)
        return token_cross_entropy(logits, batch["targets"], batch["weights"])

    return eval_step
