"""Untied token embedding and output head (vocab axis sharded over 'model')."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.nn.linear import dense


class Embed(nn.Module):
    """Token lookup in a [vocab, embed] table initialised N(0, 0.02^2)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.config
        table = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            jnp.float32,
        )
        x = jnp.take(table, tokens, axis=0).astype(jnp.dtype(cfg.dtype))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class LMHead(nn.Module):
    """Output projection to vocabulary logits, returned in float32 for a stable loss."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        logits = dense(self.config, self.config.vocab_size, ("embed", "vocab"), name="unembed")(x)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
