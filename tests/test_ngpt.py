"""nGPT (REFERENCE.md section 2): unit norms after init and training, scaled vectors, sharding, FLOPs."""
import dataclasses
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, command_env
from test_flops import compiled_step_flops
from test_sharding import tiny_run, train_on_mesh

from scaling import sharding
from scaling.config import MeshConfig, ModelConfig
from scaling.models.ngpt import D_MODEL_AXIS, NGPT, normalize_matrices, scale_specs
from scaling.models.registry import get_architecture
from scaling.sample import Decoder

CFG = ModelConfig(arch="ngpt", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=32)
STEPS = 4


def keys_of(path) -> list[str]:
    return [str(getattr(k, "key", k)) for k in path]


def matrix_norms(params) -> dict[str, np.ndarray]:
    """{path: norms of the matrix's d_model vectors} for every matrix nGPT keeps on the sphere."""
    norms = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = keys_of(path)
        owner = keys[-1] if keys[-1] == "embedding" else keys[-2]
        if keys[-1] in ("kernel", "embedding"):
            norms["/".join(keys)] = np.linalg.norm(np.asarray(leaf), axis=D_MODEL_AXIS[owner])
    return norms


def assert_unit_norms(params):
    norms = matrix_norms(params)
    assert set(k.split("/")[-2] for k in norms) >= {"qkv", "out", "up_gate", "down", "unembed", "embed"}
    for name, values in norms.items():
        np.testing.assert_allclose(values, 1.0, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def single_device():
    """(losses, final state) of STEPS steps on one device."""
    return train_on_mesh(CFG, MeshConfig(data=1), jax.devices()[:1], steps=STEPS)


def test_matrices_have_unit_norm_at_init():
    assert_unit_norms(tiny_run(CFG, MeshConfig(data=1), jax.devices()[:1]).init_state().params)


def test_matrices_have_unit_norm_after_training(single_device):
    losses, state = single_device
    assert losses[-1] < losses[0]
    assert_unit_norms(state.params)


@pytest.mark.parametrize("mesh", [(2, 4, 1)], ids=["model4"])
def test_sharded_losses_equal_single_device(single_device, mesh):
    expected, _ = single_device
    losses, state = train_on_mesh(CFG, MeshConfig(*mesh), steps=STEPS)
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    qkv = state.params["blocks"]["layers"]["block_0"]["attn"]["qkv"]["kernel"]
    assert sharding.shard_shapes(qkv) == {(CFG.n_layers, CFG.d_model, 3, CFG.n_heads // mesh[1], CFG.d_head)}
    s_z = state.params["logit_scale"]["s_z"]["scale"]
    assert sharding.shard_shapes(s_z) == {(CFG.vocab_size // mesh[1],)}
    assert_unit_norms(state.params)


def test_renormalisation_needs_no_collectives():
    """The post-step on sharded parameters compiles to per-shard work: no gather, no reduction across devices."""
    run = tiny_run(CFG, MeshConfig(data=2, model=4))
    shardings = run.shardings.params
    hlo = jax.jit(normalize_matrices, in_shardings=(shardings,), out_shardings=shardings).lower(
        run.abstract_state.params).compile().as_text()
    for collective in ("all-gather", "all-reduce", "all-to-all", "collective-permute"):
        assert collective not in hlo


def test_scaled_vectors_start_at_their_init_value():
    init = jax.jit(NGPT(CFG).init)(jax.random.key(0), jnp.zeros((1, CFG.seq_len), jnp.int32))
    params = normalize_matrices(nn.unbox(init["params"]))
    specs = scale_specs(CFG)
    found = set()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = keys_of(path)[-2]
        if name in specs:
            s_init, s_scale = specs[name]
            np.testing.assert_allclose(leaf, s_scale, rtol=1e-6)
            np.testing.assert_allclose(leaf * (s_init / s_scale), s_init, rtol=1e-6)
            found.add(name)
    assert found == set(specs)
    # With s_z = 1 and unit-norm h and E_out rows, every logit is a cosine.
    tokens = jax.random.randint(jax.random.key(1), (2, CFG.seq_len), 0, CFG.vocab_size)
    logits = jax.jit(NGPT(CFG).apply)({"params": params}, tokens)
    assert float(jnp.max(jnp.abs(logits))) <= 1.0 + 1e-5


def test_unknown_matrix_is_refused():
    with pytest.raises(KeyError, match="no d_model axis"):
        normalize_matrices({"mystery": {"kernel": jnp.ones((4, 4))}})


def test_analytic_flops_match_compiled_cost_analysis():
    cfg = ModelConfig(arch="ngpt", d_model=256, n_layers=2, n_heads=4, d_ff=704, seq_len=128, vocab_size=256,
                      scan_layers=False)
    analytic = get_architecture("ngpt").counts(cfg).flops_per_token * 4 * cfg.seq_len
    assert compiled_step_flops(cfg, 4) == pytest.approx(analytic, rel=0.10)


def test_isoflop_plans_gpt_and_ngpt_at_the_quickstart_budget(tmp_path):
    env = command_env()
    result = subprocess.run(
        [sys.executable, "-m", "experiments.isoflop", "--budget", "3e12", "--seq_len", "128", "--num_sizes", "5",
         "--archs", "gpt,ngpt", "--dry_run", "--workdir", str(tmp_path / "sweep")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    runs = [line.split()[0] for line in result.stdout.splitlines() if line.startswith(("gpt-", "ngpt-"))]
    assert len(runs) >= 6 and sum(r.startswith("ngpt-") for r in runs) == len(runs) // 2
    assert not (tmp_path / "sweep").exists()


def test_incremental_decoding_matches_the_full_forward():
    cfg = dataclasses.replace(CFG, seq_len=12)
    init = jax.jit(NGPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 12), jnp.int32))
    params = normalize_matrices(nn.unbox(init["params"]))
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, cfg.vocab_size)
    decoder = Decoder(cfg, params, 12)
    pieces = [decoder(tokens[:, :8])] + [decoder(tokens[:, i : i + 1]) for i in range(8, 12)]
    full = jax.jit(NGPT(cfg).apply)({"params": params}, tokens)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)
