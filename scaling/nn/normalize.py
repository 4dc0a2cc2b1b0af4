"""Unit-norm helpers of nGPT (Loshchilov et al. 2024, arXiv 2410.01131): Norm(x) and scaled vectors."""
import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
    """Norm(x) = x / max(||x||_2, eps) along `axis`, computed in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    sum_sq = jnp.sum(jnp.square(x32), axis=axis, keepdims=True)
    return (x32 * jax.lax.rsqrt(jnp.maximum(sum_sq, eps * eps))).astype(x.dtype)


class Scale(nn.Module):
    """A learned vector s stored initialised to `s_scale` and used as s * (s_init / s_scale) (paper sec. 2.5).

    Its effective value starts at `s_init`, and Adam's step on the stored value (~lr) moves the
    effective value by ~lr * s_init / s_scale: `s_scale` sets the vector's effective learning rate.
    """

    shape: tuple[int, ...]
    logical_axes: tuple[str, ...]
    s_init: float
    s_scale: float

    @nn.compact
    def __call__(self) -> jax.Array:
        initializer = nn.with_logical_partitioning(nn.initializers.constant(self.s_scale), self.logical_axes)
        stored = self.param("scale", initializer, self.shape, jnp.float32)
        return stored * (self.s_init / self.s_scale)
