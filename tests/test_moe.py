"""Properties of the Switch MoE layer (REFERENCE.md section 3): routing, capacity, losses, precision."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.models.registry import model_config
from scaling.nn.mlp import GatedMLP
from scaling.nn.moe import BALANCE_COEF, SwitchFFN, balance_loss, capacity, route

CFG = model_config("switch", d_model=32, d_ff=64, num_experts=4, group_size=16, seq_len=16)


def apply_layer(cfg, params, x, train=False):
    """(output, sown collections) of SwitchFFN on x."""
    return SwitchFFN(cfg).apply({"params": params}, x, train, rngs={"dropout": jax.random.key(3)},
                                mutable=("aux_loss", "metrics"))


def init_layer(cfg, x):
    return nn.unbox(SwitchFFN(cfg).init(jax.random.key(0), x, False)["params"])


def test_capacity_formula_and_floor():
    assert capacity(1024, 8, 1.25) == 160
    assert capacity(100, 8, 1.0) == 13
    assert capacity(16, 8, 1.0) == 4


def test_positions_are_an_exclusive_cumsum_and_overflow_is_dropped():
    logits = jnp.log(jnp.array([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]]))
    dispatch, gate, _, assigned = route(logits, slots=2)
    # (token, expert, slot) of every dispatched token: the 4th token overflows expert 0 and is dropped.
    np.testing.assert_array_equal(np.argwhere(np.asarray(dispatch[0])), [[0, 0, 0], [1, 0, 1], [2, 1, 0]])
    np.testing.assert_allclose(gate[0], [0.9, 0.8, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(assigned[0].sum(0), [3, 1])


def test_single_expert_with_room_for_all_equals_dense_swiglu():
    cfg = CFG.replace(num_experts=1, capacity_factor=1.0, eval_capacity_factor=1.0)
    x = jax.random.normal(jax.random.key(1), (2, 16, 32))
    params = init_layer(cfg, x)
    experts = params["experts"]
    dense = {"up_gate": {"kernel": experts["up_gate"][0]}, "down": {"kernel": experts["down"][0]}}
    out, sown = apply_layer(cfg, params, x, train=True)
    np.testing.assert_allclose(out, GatedMLP(cfg).apply({"params": dense}, x), rtol=1e-5, atol=1e-6)
    assert float(sown["metrics"]["dropped_frac"][0]) == 0.0


def test_tokens_over_capacity_get_exactly_zero_output():
    x = jnp.abs(jax.random.normal(jax.random.key(2), (1, 16, 32))) + 0.1
    params = init_layer(CFG, x)
    params["router"] = jnp.zeros_like(params["router"]).at[:, 0].set(1.0)  # every token to expert 0
    out, sown = apply_layer(CFG.replace(eval_capacity_factor=1.0), params, x)
    kept = capacity(16, 4, 1.0)
    assert np.all(np.abs(np.asarray(out[0, :kept])).max(axis=-1) > 0)
    assert np.all(np.asarray(out[0, kept:]) == 0.0)
    assert float(sown["metrics"]["dropped_frac"][0]) == pytest.approx(1 - kept / 16)
    assert float(sown["metrics"]["expert_load/0"][0]) == 1.0


def test_balance_loss_is_alpha_for_a_uniform_router():
    probs = jnp.full((3, 16, 4), 0.25)
    one_expert = jax.nn.one_hot(jnp.zeros((3, 16), jnp.int32), 4)
    balanced = jax.nn.one_hot(jnp.arange(48).reshape(3, 16) % 4, 4)
    assert float(balance_loss(probs, one_expert)) == pytest.approx(BALANCE_COEF)
    assert float(balance_loss(probs, balanced)) == pytest.approx(1.0 * BALANCE_COEF)
    skewed = jax.nn.softmax(jnp.array([3.0, 0, 0, 0]))
    assert float(balance_loss(jnp.broadcast_to(skewed, (3, 16, 4)), one_expert)) > BALANCE_COEF


def test_zero_router_sows_uniform_losses_and_metrics():
    cfg = CFG.replace(router_z_loss=1e-3)
    x = jax.random.normal(jax.random.key(4), (2, 16, 32))
    params = init_layer(cfg, x)
    params["router"] = jnp.zeros_like(params["router"])
    _, sown = apply_layer(cfg, params, x, train=True)
    assert float(sown["aux_loss"]["balance_loss"][0]) == pytest.approx(BALANCE_COEF)
    assert float(sown["aux_loss"]["router_z_loss"][0]) == pytest.approx(1e-3 * np.log(4) ** 2, rel=1e-5)
    assert float(sown["metrics"]["router_entropy"][0]) == pytest.approx(np.log(4), rel=1e-5)
    assert sum(float(sown["metrics"][f"expert_load/{i}"][0]) for i in range(4)) == pytest.approx(1.0)


def test_bfloat16_compute_keeps_the_router_in_float32():
    cfg = CFG.replace(dtype="bfloat16")
    x = jax.random.normal(jax.random.key(5), (2, 16, 32)).astype(jnp.bfloat16)
    params = init_layer(cfg, x)
    out, sown = SwitchFFN(cfg).apply(
        {"params": params}, x, True, rngs={"dropout": jax.random.key(0)}, mutable=("intermediates",),
        capture_intermediates=lambda module, method: method == "router",
    )
    logits = jax.tree.leaves(sown["intermediates"])[0]
    assert logits.dtype == jnp.float32 and out.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_jitter_only_in_training():
    x = jax.random.normal(jax.random.key(6), (2, 16, 32))
    params = init_layer(CFG, x)
    evals = [apply_layer(CFG, params, x, train=False)[0] for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    trained = [
        SwitchFFN(CFG).apply({"params": params}, x, True, rngs={"dropout": jax.random.key(i)}, mutable=["metrics"])[0]
        for i in range(2)
    ]
    assert not np.array_equal(trained[0], trained[1])


def test_init_is_the_scaled_truncated_normal():
    cfg = CFG.replace(d_model=256, d_ff=512, num_experts=8)
    params = init_layer(cfg, jnp.zeros((1, 16, 256)))
    up, down = params["experts"]["up_gate"], params["experts"]["down"]
    assert up.shape == (8, 256, 2, 512) and down.shape == (8, 512, 256)
    assert float(jnp.std(up)) == pytest.approx(np.sqrt(0.1 / 256), rel=0.05)
    assert float(jnp.std(down)) == pytest.approx(np.sqrt(0.1 / 512), rel=0.05)
    assert float(jnp.max(jnp.abs(up))) <= 2 * np.sqrt(0.1 / 256) / 0.87962566 + 1e-6
