"""Gated feed-forward blocks (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6): SwiGLU, and
TransNormerLLM's SGLU (no activation)."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.nn.linear import dense


class GatedMLP(nn.Module):
    """down( up(x) * activation(gate(x)) ), hidden width d_ff, no biases; up and gate share one
    [d, 2, d_ff] kernel. `activation` None is the identity (SGLU); `scales(config, name=...)`
    (optional) maps (up, gate) before the product, e.g. nGPT's s_u and s_v sqrt(d); `scaled_residual`
    False initialises `down` like the other projections instead of scaled down (linear.residual_std)."""

    config: ModelConfig
    activation: Callable[[jax.Array], jax.Array] | None = nn.silu
    scales: Callable[..., nn.Module] | None = None
    scaled_residual: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        up_gate = dense(cfg, (2, cfg.d_ff), ("embed", None, "mlp"), name="up_gate")(x)
        up, gate = jnp.unstack(up_gate, axis=2)
        if self.scales is not None:
            up, gate = self.scales(cfg, name="scales")(up, gate)
        if self.activation is not None:
            gate = self.activation(gate)
        hidden = nn.with_logical_constraint((up * gate).astype(x.dtype), ("batch", "length", "mlp"))
        return dense(cfg, cfg.d_model, ("mlp", "embed"), residual=self.scaled_residual, name="down")(hidden)
