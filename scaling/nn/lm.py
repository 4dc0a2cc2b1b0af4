"""The decoder-only language-model shell every architecture shares: embed -> Stack -> norm -> head."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.nn.embed import Embed, LMHead
from scaling.nn.norms import RMSNorm
from scaling.nn.stack import Block, Stack


def default_positions(tokens: jax.Array) -> jax.Array:
    """Positions 0..T-1 for every sequence of a [batch, length] token array."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


class LanguageModel(nn.Module):
    """tokens [batch, length] -> float32 logits [batch, length, vocab].

    The blocks are a `Stack` of `prefix` then `pattern` repeated (scaling/nn/stack.py).
    The token embeddings are multiplied by `embed_scale` (TNL's sqrt(d)); `final_norm()` (None: no
    norm) precedes the untied head; `logit_scale(config, name=...)()` (optional) multiplies the logits
    (nGPT's s_z).
    Call modes: `train` (dropout, router jitter); `autoregressive` computes every position from it
    and earlier tokens only, as sampling does; decoding (a mutable 'cache') requires it.
    """

    config: ModelConfig
    pattern: tuple[Block, ...]
    prefix: tuple[Block, ...] = ()
    final_norm: Callable[..., nn.Module] | None = RMSNorm
    logit_scale: Callable[..., nn.Module] | None = None
    embed_scale: float = 1.0

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, train: bool = False,
                 autoregressive: bool = False) -> jax.Array:
        cfg = self.config
        positions = default_positions(tokens) if positions is None else positions
        x = Embed(cfg, name="embed")(tokens)
        if self.embed_scale != 1.0:
            x = x * jnp.asarray(self.embed_scale, x.dtype)
        x = Stack(cfg, self.pattern, self.prefix, name="blocks")(x, positions, train, autoregressive)
        if self.final_norm is not None:
            x = self.final_norm(name="final_norm")(x)
        logits = LMHead(cfg, name="head")(x)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale(cfg, name="logit_scale")()
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
