"""The cross-entropy's hand-written gradient: equal to optax's in value and gradient, in float32 and
bfloat16, sharded over the vocabulary or not, and free of scatters."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from scaling.train.cross_entropy import cross_entropy


def _problem(dtype):
    logits = (4 * jax.random.normal(jax.random.key(0), (4, 5, 64))).astype(dtype)
    labels = jax.random.randint(jax.random.key(1), (4, 5), 0, 64)
    weights = jax.random.uniform(jax.random.key(2), (4, 5))
    return logits, labels, weights


def _weighted(loss_fn):
    return jax.jit(jax.value_and_grad(lambda x, labels, w: jnp.sum(loss_fn(x, labels) * w)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_equals_optax_in_value_and_gradient(dtype):
    logits, labels, weights = _problem(dtype)
    value, grad = _weighted(cross_entropy)(logits, labels, weights)
    expected_value, expected_grad = _weighted(
        lambda x, y: optax.softmax_cross_entropy_with_integer_labels(x.astype(jnp.float32), y))(logits, labels, weights)
    assert value.dtype == jnp.float32 and grad.dtype == dtype
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad, np.float32), np.asarray(expected_grad, np.float32), atol=tolerance)


def test_vocabulary_sharded_equals_unsharded_and_has_no_scatter():
    logits, labels, weights = _problem(jnp.float32)
    mesh = jax.make_mesh((2, 4), ("data", "model"), devices=jax.devices()[:8])
    sharded = jax.device_put(logits, NamedSharding(mesh, PartitionSpec("data", None, "model")))
    step = _weighted(cross_entropy)
    value, grad = step(sharded, labels, weights)
    expected_value, expected_grad = step(logits, labels, weights)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
    assert " scatter(" not in step.lower(logits, labels, weights).compile().as_text()
