"""TransNormerLLM: decays per REFERENCE.md section 5, scan == unroll, sharded == unsharded, FLOP count."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_command
from test_flops import compiled_step_flops
from test_sharding import train_on_mesh

from scaling import sharding
from scaling.config import MeshConfig, ModelConfig
from scaling.models.registry import get_architecture, model_config
from scaling.models.tnl import TNL, alibi_slopes, layer_decays
from scaling.nn.lrpe import LRPE
from scaling.nn.stack import layer_params, stack_params


@pytest.fixture(scope="module")
def tnl_model() -> ModelConfig:
    return model_config("tnl", vocab_size=256, d_model=64, n_layers=3, n_heads=4, d_ff=128, seq_len=32,
                        chunk_size=8, lrpe=True)


def test_alibi_slopes_and_layer_decays():
    assert alibi_slopes(8) == [2.0 ** -(h + 1) for h in range(8)]
    # Non-power-of-two heads: the 4-head slopes, then every other 8-head slope.
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    decays = layer_decays(6, 4)
    np.testing.assert_allclose(decays[0], np.exp(-np.array(alibi_slopes(6)) * (1 + 1e-5)), rtol=1e-6)
    assert decays.dtype == np.float32 and np.all(decays[-1] < 1) and np.all(decays[-1] > 1 - 1e-5)
    assert np.all(np.diff(decays, axis=0) > 0)  # deeper layers decay slower
    assert layer_decays(2, 1).shape == (1, 2)


def test_embeddings_are_scaled_by_sqrt_d_as_in_the_official_code(tnl_model):
    tokens = jax.random.randint(jax.random.key(0), (2, tnl_model.seq_len), 0, 256)
    unscaled_cfg = tnl_model.replace(scale_embedding=False)
    scaled, unscaled = TNL(tnl_model), TNL(unscaled_cfg)
    params = nn.unbox(scaled.init(jax.random.key(1), tokens)["params"])
    table = params["embed"]["embedding"]
    lifted = {**params, "embed": {"embedding": table * np.sqrt(tnl_model.d_model)}}
    np.testing.assert_allclose(scaled.apply({"params": params}, tokens),
                               unscaled.apply({"params": lifted}, tokens), rtol=1e-5, atol=1e-5)
    assert not np.allclose(scaled.apply({"params": params}, tokens), unscaled.apply({"params": params}, tokens))


def test_official_init_leaves_only_the_residual_outputs_unscaled(tnl_model):
    """--official_init (the default): W_o and W_3 drawn like every projection (the released code), not
    scaled down by sqrt(2L) as --noofficial_init does; with the same key every other parameter is the same."""
    tokens = jnp.zeros((1, tnl_model.seq_len), jnp.int32)
    init = lambda cfg: jax.tree_util.tree_flatten_with_path(nn.unbox(TNL(cfg).init(jax.random.key(1), tokens)))[0]
    ratio = np.sqrt(2 * tnl_model.n_layers)
    residual_outputs = 0
    for (path, scaled), (_, official) in zip(init(tnl_model.replace(official_init=False)), init(tnl_model)):
        names = jax.tree_util.keystr(path)
        is_residual_output = "['attn']['out']" in names or "['mlp']['down']" in names
        residual_outputs += is_residual_output
        np.testing.assert_allclose(official, scaled * ratio if is_residual_output else scaled, rtol=1e-6, err_msg=names)
    assert residual_outputs == 4  # out and down of the LRPE prefix block and of the scanned blocks


def test_lrpe_is_relative_and_initialised_as_the_official_code():
    q, k = (jax.random.normal(jax.random.key(i), (1, 6, 2, 4)) for i in (0, 1))
    positions = jnp.arange(6)[None]
    lrpe = LRPE()
    params = lrpe.init(jax.random.key(2), q, positions)
    theta = nn.unbox(params)["params"]["theta"]
    np.testing.assert_allclose(theta.reshape(-1), 10000.0 ** (-2.0 * np.arange(8) / 8), rtol=1e-6)  # heads in a row
    scores = lambda shift: jnp.einsum("bthd,bshd->bhts", lrpe.apply(params, q, positions + shift),
                                      lrpe.apply(params, k, positions + shift))
    np.testing.assert_allclose(scores(0), scores(37), rtol=1e-4, atol=1e-4)  # only t - s matters


def test_scanned_and_unrolled_stacks_compute_the_same_function(tnl_model):
    tokens = jax.random.randint(jax.random.key(0), (2, tnl_model.seq_len), 0, 256)
    params = nn.unbox(TNL(tnl_model).init(jax.random.key(1), tokens)["params"])
    assert params["blocks"]["prefix_0"]["block_0"]["attn"]["lrpe"]["theta"].shape == (4, 16)
    assert "lrpe" not in params["blocks"]["layers"]["block_0"]["attn"]
    unrolled_cfg = dataclasses.replace(tnl_model, scan_layers=False)
    layers = layer_params(params["blocks"], 3, 1, prefix=1)
    unrolled = {**params, "blocks": stack_params(layers, 1, prefix=1, scanned=False)}
    np.testing.assert_allclose(
        TNL(dataclasses.replace(tnl_model, unroll_layers=False)).apply({"params": params}, tokens),  # looped
        TNL(unrolled_cfg).apply({"params": unrolled}, tokens), rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize("mesh", [(2, 4, 1)])
def test_sharded_training_equals_single_device(tnl_model, mesh):
    expected, _ = train_on_mesh(tnl_model, MeshConfig(data=1), jax.devices()[:1])
    losses, state = train_on_mesh(tnl_model, MeshConfig(*mesh))
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert losses[-1] < losses[0]
    qkvu = state.params["blocks"]["layers"]["block_0"]["attn"]["qkvu"]["kernel"]
    layers, d, _, heads, d_head = qkvu.shape
    assert sharding.shard_shapes(qkvu) == {(layers, d, 4, heads // mesh[1], d_head)}


@pytest.mark.parametrize(
    "shape",
    [dict(d_model=256, n_heads=4, d_ff=704, seq_len=256, chunk_size=64, lrpe=False),
     dict(d_model=128, n_heads=2, d_ff=384, seq_len=100, chunk_size=32, lrpe=True)],
    ids=["chunks-decay-alone", "ragged-lrpe"],
)
def test_analytic_flops_match_compiled_cost_analysis(shape):
    # Unrolled layers: XLA counts a scanned body once. The chunk scans (forward state recurrence and
    # the backward dKV recurrence) hold no matmuls, only an elementwise multiply-add per chunk (not
    # counted by the convention), so every counted FLOP is outside a loop and XLA sees all of them.
    cfg = model_config("tnl", vocab_size=256, n_layers=2, scan_layers=False, **shape)
    analytic = get_architecture("tnl").counts(cfg).flops_per_token * 4 * cfg.seq_len
    assert compiled_step_flops(cfg, 4) == pytest.approx(analytic, rel=0.10)


def test_flops_are_linear_in_sequence_length(tnl_model):
    per_token = [get_architecture("tnl").counts(dataclasses.replace(tnl_model, seq_len=t)).flops_per_token
                 for t in (1024, 16384)]
    assert per_token[0] == per_token[1]


@pytest.mark.parametrize("args, flag", [(["--chunk_size", "48"], "--chunk_size"), (["--chunk_size", "0"], "--chunk_size"),
                                        (["--d_model", "66", "--n_heads", "2", "--lrpe"], "--n_heads"),
                                        (["--lightning_form", "quadratic"], "--lightning_form")])
def test_bad_tnl_flags_are_one_line_and_exit_2(tmp_path, args, flag):
    workdir = tmp_path / "run"
    result = run_command("experiments.train", "--arch", "tnl", *args, "--workdir", str(workdir))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and flag in lines[0], result.stderr
    assert not workdir.exists()


def test_lrpe_is_on_the_first_layer_by_default_as_in_the_paper():
    cfg = model_config("tnl", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16)
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    blocks = nn.unbox(TNL(cfg).init(jax.random.key(0), tokens)["params"])["blocks"]
    assert "lrpe" in blocks["prefix_0"]["block_0"]["attn"] and "lrpe" not in blocks["layers"]["block_0"]["attn"]
