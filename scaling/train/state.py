"""The train state and its creation directly in its sharded layout (never whole on one device)."""
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from scaling import compiler, sharding
from scaling.config import ModelConfig


@flax.struct.dataclass
class TrainState:
    """The step, parameters and optimizer state, and the run's peak learning rate and seed as arrays:
    values of the state rather than constants of the compiled step, so that runs differing only in
    them (a learning-rate search, seeds) share one compiled step (and its compilation cache entry)."""

    step: jax.Array
    params: Any
    opt_state: Any
    learning_rate: jax.Array
    seed: jax.Array


def _boxed_init_fn(model: nn.Module, tx: optax.GradientTransformation, cfg: ModelConfig):
    """A function (learning_rate, seed) -> TrainState whose parameters and optimizer moments carry
    logical-axis boxes."""

    def init(learning_rate, seed):
        tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
        params = model.init(jax.random.key(seed), tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          learning_rate=learning_rate, seed=seed)

    return init


def _hyperparameters(learning_rate: float, seed: int) -> tuple[jax.Array, jax.Array]:
    return jnp.float32(learning_rate), jnp.int32(seed)


def abstract_state(model, tx, cfg: ModelConfig, mesh: Mesh):
    """(ShapeDtypeStruct tree of the unboxed state with shardings attached, matching NamedSharding tree)."""
    boxed = jax.eval_shape(_boxed_init_fn(model, tx, cfg), *_hyperparameters(0.0, 0))
    shardings = sharding.logical_shardings(boxed, mesh)
    shapes = nn.unbox(boxed)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return abstract, shardings


def create_state(model, tx, cfg: ModelConfig, learning_rate: float, seed: int, shardings, mesh: Mesh,
                 post_step: Callable | None = None):
    """Initialises the train state with every array born in its shard (`shardings`, from
    abstract_state), compiled as a program run once (scaling/compiler.py) that takes the learning rate
    and seed as arguments."""
    boxed_init = _boxed_init_fn(model, tx, cfg)

    def init(learning_rate, seed):
        state = nn.unbox(boxed_init(learning_rate, seed))
        return state.replace(params=post_step(state.params)) if post_step else state

    init_program = jax.jit(init, out_shardings=shardings, compiler_options=compiler.run_once_options(mesh))
    return init_program(*_hyperparameters(learning_rate, seed))
