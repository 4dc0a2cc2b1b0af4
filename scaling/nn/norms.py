"""Root-mean-square normalisation (Zhang & Sennrich 2019, eq. 4), computed in float32."""
import flax.linen as nn
import jax
import jax.numpy as jnp


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x * rsqrt(mean(x^2) + eps) over the last axis, in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype)


class RMSNorm(nn.Module):
    """rms_normalize(x) * g with a learned gain g (init 1, never weight-decayed); `use_scale=False`
    is TransNormerLLM's SRMSNorm (no gain)."""

    eps: float = 1e-6
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.use_scale:
            return rms_normalize(x, self.eps)
        gain = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), jnp.float32
        )
        x32 = rms_normalize(x.astype(jnp.float32), self.eps)
        return (x32 * gain).astype(x.dtype)
