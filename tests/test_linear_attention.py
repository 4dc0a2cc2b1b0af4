"""The parallel, chunked (Lightning Attention-2), Pallas (its fused kernels, run in interpret mode on the
CPU) and recurrent forms compute the same function."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from scaling import sharding
from scaling.config import MeshConfig
from scaling.models.tnl import layer_decays
from scaling.nn import linear_attention as forms
from scaling.nn.linear_attention import _chunked_forward, linear_attention, recurrent

# (length, heads, chunk): lengths not divisible by the chunk, a chunk longer than the sequence.
CASES = [(37, 3, 8), (64, 2, 16), (50, 4, 64)]


def inputs(length, heads, d_k=8, d_v=6, batch=2):
    """Random q, k, v and the decays of the first and last layer of a 4-layer TNL (the last near 1)."""
    kq, kk, kv = jax.random.split(jax.random.key(length * heads), 3)
    q = jax.nn.silu(jax.random.normal(kq, (batch, length, heads, d_k)))
    k = jax.nn.silu(jax.random.normal(kk, (batch, length, heads, d_k)))
    v = jax.random.normal(kv, (batch, length, heads, d_v))
    return q, k, v, jnp.asarray(layer_decays(heads, 4))


@pytest.mark.parametrize("length, heads, chunk", CASES)
@pytest.mark.parametrize("layer", [0, 3], ids=["first", "last"])
def test_forms_agree(length, heads, chunk, layer):
    q, k, v, decays = inputs(length, heads)
    reference = linear_attention(q, k, v, decays[layer], form="parallel")
    scale = float(jnp.max(jnp.abs(reference)))
    for form in ("chunked", "pallas", "recurrent"):
        out = linear_attention(q, k, v, decays[layer], form=form, chunk_size=chunk)
        np.testing.assert_allclose(out / scale, reference / scale, atol=2e-6, err_msg=form)


@pytest.mark.parametrize("form", ["chunked", "pallas"])
@pytest.mark.parametrize("length, heads, chunk, d_k, d_v",
                         [case + (8, 6) for case in CASES[:2]] + [(40, 2, 16, 128, 192)])
def test_custom_vjp_gradients_equal_autodiff_of_parallel(form, length, heads, chunk, d_k, d_v):
    """Also at head sizes the Pallas kernels split into blocks of 64 columns (2 of d_k, 3 of d_v)."""
    q, k, v, decays = inputs(length, heads, d_k, d_v)
    weights = jax.random.normal(jax.random.key(7), v.shape)

    def loss(form):
        return lambda q, k, v: jnp.sum(weights * linear_attention(q, k, v, decays[3], form=form, chunk_size=chunk))

    expected = jax.grad(loss("parallel"), argnums=(0, 1, 2))(q, k, v)
    outputs, vjp = jax.vjp(loss(form), q, k, v)
    np.testing.assert_allclose(outputs, loss("parallel")(q, k, v), rtol=1e-5)
    for name, g, e in zip("qkv", vjp(jnp.ones(())), expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(e))), err_msg=name)


def test_recurrent_state_continues_a_sequence():
    q, k, v, decays = inputs(20, 2)
    state = jnp.zeros((2, 2, 8, 6), jnp.float32)
    first, state = recurrent(q[:, :12], k[:, :12], v[:, :12], decays[1], state)
    second, _ = recurrent(q[:, 12:], k[:, 12:], v[:, 12:], decays[1], state)
    full = linear_attention(q, k, v, decays[1], form="parallel")
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), full, rtol=1e-5, atol=1e-4)


def saved_bytes(attention, *args) -> int:
    """Bytes of the residuals a function keeps from its forward pass for its backward pass."""
    saved = jax.eval_shape(lambda *a: jax.vjp(attention, *a)[1], *args)
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(saved))


@pytest.mark.parametrize("form", ["chunked", "pallas"])
def test_custom_vjp_saves_only_q_k_v(form):
    q, k, v, decays = inputs(1024, 2, d_k=16, d_v=16, batch=1)
    custom = saved_bytes(lambda q, k, v: linear_attention(q, k, v, decays[0], form=form, chunk_size=64), q, k, v)
    autodiff = saved_bytes(lambda q, k, v: _chunked_forward(q, k, v, decays[0], 64), q, k, v)
    assert custom <= q.nbytes + k.nbytes + v.nbytes + decays[0].nbytes < autodiff


def test_pallas_runs_on_each_devices_sequences_and_heads_and_equals_the_whole():
    """Batch over data x fsdp, heads over model (a Pallas call is opaque to XLA's partitioner)."""
    q, k, v, decays = inputs(64, 4, d_k=16, d_v=16, batch=4)
    mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, model=2), jax.devices()[:8])
    spec = NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length", "heads", "kv"), sharding.RULES))

    def loss(q, k, v):
        return jnp.sum(jnp.sin(linear_attention(q, k, v, decays[3], form="pallas", chunk_size=16)))

    with sharding.activate(mesh):
        step = jax.jit(jax.value_and_grad(loss, (0, 1, 2)), in_shardings=(spec,) * 3)
        hlo = step.lower(q, k, v).as_text()
        value, grads = step(q, k, v)
    assert "sdy.manual_computation" in hlo
    expected_value, expected_grads = jax.value_and_grad(loss, (0, 1, 2))(q, k, v)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_auto_form_is_pallas_where_it_compiles_to_triton(monkeypatch):
    assert forms.auto_form(64, 64, 64) == "chunked"  # a CPU: Pallas would only interpret the kernels
    monkeypatch.setattr(forms, "compiling_for", lambda: "gpu")
    assert forms.auto_form(64, 128, 64) == "pallas"
    assert forms.auto_form(48, 64, 64) == forms.auto_form(64, 64, 8) == "chunked"


def test_bad_arguments():
    q, k, v, decays = inputs(8, 1)
    with pytest.raises(ValueError, match="power of two"):
        linear_attention(q, k, v, decays[0], chunk_size=48)
    with pytest.raises(ValueError, match="form"):
        linear_attention(q, k, v, decays[0], form="quadratic")
