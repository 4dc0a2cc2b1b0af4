"""Pure train and eval steps shared by every architecture.

The loss the optimizer sees is the LM cross-entropy plus every auxiliary loss a layer sows into the
'aux_loss' collection (averaged over the layers that sow it); each is reported by name, as are the
scalars sown into 'metrics'. The LM loss alone is what evaluation and isoFLOP fits use.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from scaling import sharding
from scaling.train.state import TrainState

AUX_COLLECTIONS = ("aux_loss", "metrics")


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weighted next-token cross-entropies, sum of weights)."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)


def _named_means(collection) -> dict[str, jax.Array]:
    """{name: mean over every layer that sowed `name`}, scanned (stacked) or unrolled alike."""
    values = {}
    for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
        name = [k.key for k in path if hasattr(k, "key")][-1]
        values.setdefault(name, []).append(jnp.ravel(value))
    return {name: jnp.mean(jnp.concatenate(parts)) for name, parts in values.items()}


def make_train_step(model, tx: optax.GradientTransformation, seed: int, post_step: Callable | None = None):
    """(state, batch) -> (state, metrics): one optimizer step, then the architecture's post-step hook."""

    def loss_fn(params, batch, rng):
        logits, sown = model.apply(
            {"params": params}, batch["inputs"], train=True, rngs={"dropout": rng}, mutable=AUX_COLLECTIONS
        )
        total, count = token_cross_entropy(logits, batch["targets"], batch["weights"])
        lm_loss = total / jnp.maximum(count, 1.0)
        aux = _named_means(sown.get("aux_loss", {}))
        metrics = {"loss": lm_loss, **aux, **_named_means(sown.get("metrics", {}))}
        return lm_loss + sum(aux.values()), metrics

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if post_step is not None:
            params = post_step(params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model):
    """(params, batch) -> (sum of token losses, number of tokens), for exact means over many batches."""

    def eval_step(params, batch):
        logits = model.apply({"params": params}, batch["inputs"])
        return token_cross_entropy(logits, batch["targets"], batch["weights"])

    return eval_step


def jit_train_step(model, tx, seed: int, post_step, state_shardings, mesh):
    """The train step jitted with the state's shardings in and out (state donated), batch over data axes."""
    return jax.jit(
        make_train_step(model, tx, seed, post_step),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
