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
    step: jax.Array
    params: Any
    opt_state: Any


def _boxed_init_fn(model: nn.Module, tx: optax.GradientTransformation, cfg: ModelConfig, seed: int):
    """A function () -> TrainState whose parameters and optimizer moments carry logical-axis boxes."""

    def init():
        tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
        params = model.init(jax.random.key(seed), tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def abstract_state(model, tx, cfg: ModelConfig, seed: int, mesh: Mesh):
    """(ShapeDtypeStruct tree of the unboxed state with shardings attached, matching NamedSharding tree)."""
    boxed = jax.eval_shape(_boxed_init_fn(model, tx, cfg, seed))
    shardings = sharding.logical_shardings(boxed, mesh)
    shapes = nn.unbox(boxed)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return abstract, shardings


def create_state(model, tx, cfg: ModelConfig, seed: int, shardings, mesh: Mesh, post_step: Callable | None = None):
    """Initialises the train state with every array born in its shard (`shardings`, from
    abstract_state), compiled as a program run once (scaling/compiler.py)."""
    boxed_init = _boxed_init_fn(model, tx, cfg, seed)

    def init():
        state = nn.unbox(boxed_init())
        return state.replace(params=post_step(state.params)) if post_step else state

    return jax.jit(init, out_shardings=shardings, compiler_options=compiler.run_once_options(mesh))()
