"""The run builder: everything one run derives from (ModelConfig, TrainConfig, mesh), built once.

The training loop, the benchmarks, sampling, speedup and distillation all start here, so an
architecture's model, optimizer recipe, post-step hook and mesh checks are looked up in one place.
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from scaling import data, sharding
from scaling.compiler import compiler_options
from scaling.config import ModelConfig, TrainConfig, UsageError
from scaling.models.registry import get_architecture
from scaling.nn.stack import unrolls
from scaling.train import checkpoints
from scaling.train.state import abstract_state, create_state
from scaling.train.steps import LMLoss, Loss, make_eval_step, make_train_step


class Run:
    """The model, optimizer and schedule, state shardings, init/restore, and the jitted steps of one run.

    `loss` defaults to the LM loss; `total_steps` (default: the train config's) sets the schedule;
    `cache_dir` keeps trained tokenizers and tokenised data (scaling/data/sources.py).
    Configs are validated and the mesh is checked on construction (UsageError on bad input). Settings
    left to fit the device memory resolve here to none (remat auto) and one microbatch (0);
    scaling/train/fitting.py chooses them against a device's memory instead. The scan over the layers
    is unrolled or not as the mesh's platform prefers unless told (scaling/nn/stack.py `unrolls`).
    The peak learning rate and the seed are arrays of the train state, not constants of the compiled
    step: runs that differ only in them share one step and its compilation cache entry.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, mesh: Mesh, *, loss: Loss | None = None,
                 total_steps: int | None = None, cache_dir: str | None = None):
        if model_cfg.remat == "auto":
            model_cfg = dataclasses.replace(model_cfg, remat="none")
        model_cfg = dataclasses.replace(model_cfg, unroll_layers=unrolls(model_cfg, mesh.devices.flat[0].platform))
        train_cfg = dataclasses.replace(train_cfg, microbatches=train_cfg.microbatches or 1)
        self.model_cfg = model_cfg.validate()
        self.train_cfg = train_cfg.validate(model_cfg.seq_len)
        self.arch = get_architecture(model_cfg.arch)
        self.arch.check_fits(mesh, model_cfg, train_cfg.batch_size)
        self.data_options = {"tokenizer": train_cfg.tokenizer, "data_dir": train_cfg.data_dir,
                             "text_key": train_cfg.text_key, "cache_dir": cache_dir,
                             "train_tokens": train_cfg.data_tokens}
        per_device = train_cfg.batch_size // sharding.batch_ways(mesh)
        if per_device % train_cfg.microbatches:
            raise UsageError("--microbatches", f"{train_cfg.microbatches} does not divide the {per_device} sequences "
                                               "per device of each batch")
        self.mesh = mesh
        self.loss = loss or LMLoss()
        self.total_steps = total_steps or train_cfg.steps(model_cfg.seq_len)
        self.model = self.arch.model(model_cfg)
        self.tx, unit_schedule = self.arch.optimizer(train_cfg, self.total_steps)
        self.schedule = lambda step: train_cfg.learning_rate * unit_schedule(step)
        self.abstract_state, self.shardings = abstract_state(self.model, self.tx, model_cfg, mesh)

    def init_state(self, init_from: Callable | None = None):
        """A fresh state born in its shards; `init_from` (optional) maps the fresh parameters to others."""
        state = create_state(self.model, self.tx, self.model_cfg, self.train_cfg.learning_rate, self.train_cfg.seed,
                             self.shardings, self.mesh, self.arch.post_step)
        if init_from is None:
            return state
        # Copies: the state is donated to every step, and init_from may return arrays the caller keeps.
        params = jax.tree.map(jnp.copy, init_from(state.params))
        return state.replace(params=jax.device_put(params, self.shardings.params))

    def restore(self, mngr):
        """The latest checkpoint of `mngr` laid out like this run's state, or None."""
        return checkpoints.restore_latest(mngr, self.abstract_state)

    def batch_spec(self) -> dict:
        """Shapes, dtypes and shardings of one global batch (for compiling without data)."""
        cfg, batch = self.model_cfg, self.train_cfg.batch_size
        tokens = jax.ShapeDtypeStruct((batch, cfg.seq_len), jnp.int32, sharding=sharding.batch_sharding(self.mesh))
        return {"inputs": tokens, "targets": tokens, "weights": tokens.update(dtype=jnp.float32)}

    def train_step(self):
        """The train step (state, batch, frozen) -> (state, metrics), jitted with the state's shardings
        in and out (state donated), the batch over the data axes and the platform's compile options."""
        frozen_shardings = jax.tree.map(lambda x: x.sharding, self.loss.frozen)
        return jax.jit(
            make_train_step(self.model, self.tx, self.loss, self.arch.post_step, self.train_cfg.microbatches),
            in_shardings=(self.shardings, sharding.batch_sharding(self.mesh), frozen_shardings),
            out_shardings=(self.shardings, sharding.replicated(self.mesh)),
            donate_argnums=0,
            compiler_options=compiler_options(self.mesh),
        )

    @functools.cached_property
    def compiled_train_step(self):
        """The train step compiled ahead of time for this run's state and batch (nothing allocated)."""
        frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.loss.frozen)
        with sharding.activate(self.mesh):
            return self.train_step().lower(self.abstract_state, self.batch_spec(), frozen).compile()

    def memory_per_device(self) -> int:
        """Bytes the compiled train step holds on one device: arguments, temporaries and the outputs that
        do not reuse a donated argument's buffer (XLA's memory analysis)."""
        memory = self.compiled_train_step.memory_analysis()
        return (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                - memory.alias_size_in_bytes)

    def eval_step(self, autoregressive: bool = False):
        """(params, batch) -> (sum of token losses, tokens), jitted over the mesh (`autoregressive`: of
        the pass sampling takes)."""
        return jax.jit(make_eval_step(self.model, autoregressive),
                       in_shardings=(self.shardings.params, sharding.batch_sharding(self.mesh)),
                       compiler_options=compiler_options(self.mesh))

    def check_data(self) -> None:
        """UsageError unless the data serves this run: the model's vocabulary holds every token id, and
        every split holds a record of seq_len + 1 tokens (packed here, or loaded from the cache, once per
        process), so that a command finds bad data before it writes anything."""
        tokens = data.vocab_size(self.train_cfg.data, **self.data_options)
        if self.model_cfg.vocab_size < tokens:
            raise UsageError("--vocab_size", f"{self.model_cfg.vocab_size} is below the {tokens} token ids of --data "
                                             f"{self.train_cfg.data} with --tokenizer {self.train_cfg.tokenizer}; "
                                             "raise it")
        for split in data.SPLITS:
            data.make_source(self.train_cfg.data, split, self.model_cfg.seq_len, **self.data_options)

    def epochs_per_step(self) -> float:
        """The share of the training split (its windows of seq_len + 1 tokens) one step reads."""
        source = data.make_source(self.train_cfg.data, "train", self.model_cfg.seq_len, **self.data_options)
        return self.train_cfg.batch_size / len(source)

    def loader(self, split: str = "train", seed: int | None = None) -> data.BatchLoader:
        """Batches of this run's data split, a pure function of (seed, step)."""
        return data.BatchLoader(
            data.make_source(self.train_cfg.data, split, self.model_cfg.seq_len, **self.data_options),
            global_batch_size=self.train_cfg.batch_size,
            seed=self.train_cfg.seed if seed is None else seed,
            sharding=sharding.batch_sharding(self.mesh),
        )
