"""Sharded training equals single-device training, and parameters really are split over the mesh."""
import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from scaling import sharding
from scaling.config import MeshConfig, TrainConfig, UsageError
from scaling.models.gpt import GPT
from scaling.nn.stack import layer_params, stack_params
from scaling.train.run import Run

STEPS = 3


def tiny_run(cfg, mesh_cfg, devices=None, batch_size=8, **train_changes) -> Run:
    """A 10-step run of `cfg` on synthetic data (lr 1e-2, no warmup) over the given mesh."""
    train_cfg = TrainConfig(learning_rate=1e-2, warmup_frac=0.0, batch_size=batch_size,
                            tokens=10 * batch_size * cfg.seq_len, data="synthetic", **train_changes)
    return Run(cfg, train_cfg, sharding.make_mesh(mesh_cfg, devices))


def train_on_mesh(cfg, mesh_cfg, devices=None, steps=STEPS, **train_changes):
    """(per-step losses, final state) of a few steps on synthetic data over the given mesh."""
    run = tiny_run(cfg, mesh_cfg, devices, **train_changes)
    state, loader, step = run.init_state(), run.loader(), run.train_step()
    losses = []
    with sharding.activate(run.mesh):
        for i in range(steps):
            state, metrics = step(state, loader(i), None)
            losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def single_device(request):
    cache = {}

    def run(cfg):
        if cfg not in cache:
            cache[cfg] = train_on_mesh(cfg, MeshConfig(data=1), jax.devices()[:1])
        return cache[cfg]

    return run


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1)])
def test_sharded_losses_equal_single_device(tiny_model, single_device, mesh):
    expected, _ = single_device(tiny_model)
    losses, state = train_on_mesh(tiny_model, MeshConfig(*mesh))
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert losses[-1] < losses[0]
    qkv = state.params["blocks"]["layers"]["block_0"]["attn"]["qkv"]["kernel"]
    layers, d, _, heads, d_head = qkv.shape
    assert sharding.shard_shapes(qkv) == {(layers, d, 3, heads // mesh[1], d_head)}
    up_gate = state.params["blocks"]["layers"]["block_0"]["mlp"]["up_gate"]["kernel"]
    assert sharding.shard_shapes(up_gate) == {(layers, d, 2, tiny_model.d_ff // mesh[1])}
    mu = state.opt_state[1][0].mu["head"]["unembed"]["kernel"]
    assert sharding.shard_shapes(mu) == {(d, tiny_model.vocab_size // mesh[1])}


@pytest.mark.parametrize("change", [dict(remat="full"), dict(remat="dots"), dict(unroll_layers=False)],
                         ids=["remat", "dots", "looped"])
def test_layer_options_do_not_change_the_math(tiny_model, single_device, change):
    expected, _ = single_device(tiny_model)
    losses, _ = train_on_mesh(dataclasses.replace(tiny_model, **change), MeshConfig(data=1), jax.devices()[:1])
    np.testing.assert_allclose(losses, expected, rtol=1e-4)


def test_scanned_and_unrolled_stacks_compute_the_same_function_and_gradients(tiny_model):
    # The looped stack recomputes its elementwise work in the backward pass; the unrolled one does not.
    looped_cfg = dataclasses.replace(tiny_model, unroll_layers=False)
    unrolled_cfg = dataclasses.replace(tiny_model, scan_layers=False)
    tokens = jax.random.randint(jax.random.key(0), (2, tiny_model.seq_len), 0, tiny_model.vocab_size)
    params = nn.unbox(GPT(unrolled_cfg).init(jax.random.key(1), tokens)["params"])
    assert set(params["blocks"]) == {f"layers_{i}" for i in range(tiny_model.n_layers)}

    def scanned(tree):
        return {**tree, "blocks": stack_params(layer_params(tree["blocks"], tiny_model.n_layers, 1), 1)}

    @functools.partial(jax.jit, static_argnums=0)
    def logits_and_gradients(cfg, tree):
        logits, pullback = jax.vjp(lambda p: GPT(cfg).apply({"params": p}, tokens), tree)
        return logits, pullback(jax.numpy.sin(logits))[0]

    logits, grads = logits_and_gradients(looped_cfg, scanned(params))
    expected_logits, expected_grads = logits_and_gradients(unrolled_cfg, params)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(scanned(expected_grads))):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_looped_stack_holds_no_more_temporary_memory_than_separate_layers(tiny_model):
    # A loop stacks whatever its blocks keep for the backward pass; they keep only matmul outputs.
    layers = (dict(unroll_layers=False), dict(scan_layers=False))
    temporary = [tiny_run(dataclasses.replace(tiny_model, **kind), MeshConfig(data=1), jax.devices()[:1])
                 .compiled_train_step.memory_analysis().temp_size_in_bytes for kind in layers]
    assert temporary[0] <= temporary[1]


def test_bfloat16_compute_trains_close_to_float32(tiny_model, single_device):
    expected, _ = single_device(tiny_model)
    losses, state = train_on_mesh(dataclasses.replace(tiny_model, dtype="bfloat16"), MeshConfig(data=2, model=2), jax.devices()[:4])
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
    np.testing.assert_allclose(losses, expected, rtol=2e-2)


@pytest.mark.parametrize(
    "mesh, flag",
    [(MeshConfig(data=3), "--mesh"), (MeshConfig(data=-1, model=-1), "--mesh"), (MeshConfig(data=1, model=8), "--mesh")],
)
def test_bad_meshes_are_usage_errors(tiny_model, mesh, flag):
    with pytest.raises(UsageError) as error:
        sharding.check_fits(sharding.make_mesh(mesh), tiny_model, 8)
    assert error.value.flag == flag


def test_batch_must_divide_over_data_axes(tiny_model):
    with pytest.raises(UsageError, match="batch_size"):
        sharding.check_fits(sharding.make_mesh(MeshConfig(data=8)), tiny_model, 4)


def test_mesh_parsing():
    assert MeshConfig.parse("data=-1,model=2") == MeshConfig(data=-1, model=2, expert=1)
    assert MeshConfig.parse("data=2,model=2,expert=2").resolve(8) == {"data": 2, "fsdp": 1, "expert": 2, "model": 2}
    with pytest.raises(UsageError):
        MeshConfig.parse("data=2,pipeline=4")
