"""SwiGLU feed-forward block (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6)."""
import flax.linen as nn
import jax

from scaling.config import ModelConfig
from scaling.nn.linear import dense


class SwiGLU(nn.Module):
    """down( up(x) * silu(gate(x)) ), hidden width d_ff, no biases; up and gate share one [d, 2, d_ff] kernel."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        up_gate = dense(cfg, (2, cfg.d_ff), ("embed", None, "mlp"), name="up_gate")(x)
        up, gate = up_gate[:, :, 0], up_gate[:, :, 1]
        hidden = nn.with_logical_constraint(up * nn.silu(gate), ("batch", "length", "mlp"))
        return dense(cfg, cfg.d_model, ("mlp", "embed"), residual=True, name="down")(hidden)
