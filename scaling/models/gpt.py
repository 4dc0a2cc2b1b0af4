"""Baseline decoder-only GPT: pre-norm RMSNorm, RoPE, causal softmax attention, SwiGLU, untied head.

x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)); logits = W_out RMSNorm(x)   (REFERENCE.md section 1)
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.nn.attention import CausalSelfAttention
from scaling.nn.embed import Embed, LMHead
from scaling.nn.mlp import SwiGLU
from scaling.nn.norms import RMSNorm
from scaling.nn.stack import BlockStack


class Block(nn.Module):
    """One pre-norm Transformer block."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, train: bool) -> jax.Array:
        x = x + CausalSelfAttention(self.config, name="attn")(RMSNorm(name="attn_norm")(x), positions)
        x = x + SwiGLU(self.config, name="mlp")(RMSNorm(name="mlp_norm")(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def default_positions(tokens: jax.Array) -> jax.Array:
    """Positions 0..T-1 for every sequence of a [batch, length] token array."""
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


class GPT(nn.Module):
    """tokens [batch, length] -> float32 logits [batch, length, vocab].

    `stack(config)` builds the residual blocks (x, positions, train) -> x: n_layers `Block`s here;
    a variant swaps in its own stack (Switch: blocks with MoE FFNs).
    """

    config: ModelConfig
    stack: Callable[..., nn.Module] = functools.partial(BlockStack, Block)

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None, train: bool = False) -> jax.Array:
        positions = default_positions(tokens) if positions is None else positions
        x = Embed(self.config, name="embed")(tokens)
        x = self.stack(self.config, name="blocks")(x, positions, train)
        return LMHead(self.config, name="head")(RMSNorm(name="final_norm")(x))
