"""Softmax cross-entropy with integer labels, -log softmax(logits)[label], with its gradient written out.

The gradient of the cross-entropy in its logits is softmax(logits) - onehot(label): one elementwise
pass over the logits, given the log-normaliser saved by the forward pass. Differentiated through
optax.softmax_cross_entropy_with_integer_labels instead, the label's logit (take_along_axis) has a
scatter into a zero [tokens, vocab] array as its gradient, and the normaliser's gradient and the
scatter are separate float32 passes: XLA:GPU's plan of a 64k-token batch over a 32k vocabulary wrote
and read about 40 GB of float32 [tokens, vocab] arrays for them (README, Performance). Here the label
is picked by comparing a vocabulary iota with it (fused into the reduction over the vocabulary) and
the gradient leaves in the logits' dtype.
"""
import jax
import jax.numpy as jnp


@jax.custom_vjp
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """float32 [...]: -log softmax(logits [..., vocab])[labels [...]] (computed in float32)."""
    return _forward(logits, labels)[0]


def _is_label(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jax.lax.broadcasted_iota(labels.dtype, logits.shape, logits.ndim - 1) == labels[..., None]


def _forward(logits, labels):
    wide = logits.astype(jnp.float32)
    log_normaliser = jax.nn.logsumexp(wide, axis=-1)
    label_logit = jnp.sum(jnp.where(_is_label(logits, labels), wide, 0.0), axis=-1)
    return log_normaliser - label_logit, (logits, labels, log_normaliser)


def _backward(residuals, grad):
    logits, labels, log_normaliser = residuals
    probs = jnp.exp(logits.astype(jnp.float32) - log_normaliser[..., None])
    grad_logits = (probs - _is_label(logits, labels)) * grad[..., None]
    return grad_logits.astype(logits.dtype), None


cross_entropy.defvjp(_forward, _backward)
