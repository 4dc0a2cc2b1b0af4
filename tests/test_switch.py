"""The `switch` architecture: expert parallelism over the mesh, FLOP accounting, stack layout, bad input."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import run_command
from test_flops import compiled_step_flops
from test_sharding import tiny_run

from scaling import sharding
from scaling.config import MeshConfig, UsageError
from scaling.models.registry import get_architecture, model_config
from scaling.models.switch import Switch
from scaling.nn.stack import layer_params, stack_params

# Capacity factor 1.0 with 32-token groups over 8 experts: 4 slots each, so tokens are dropped.
CFG = model_config(
    "switch", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32,
    num_experts=8, capacity_factor=1.0, group_size=32,
)
MESHES = [(8, 1, 1), (1, 1, 8), (2, 2, 2)]


def train_on_mesh(mesh_cfg, devices=None, steps=3):
    """(per-step metrics, final state, compiled HLO text) of a few steps."""
    run = tiny_run(CFG, mesh_cfg, devices)
    state, loader, step = run.init_state(), run.loader(), run.compiled_train_step
    history = []
    with sharding.activate(run.mesh):
        for i in range(steps):
            state, metrics = step(state, loader(i), None)
            history.append(jax.device_get(metrics))
    return history, state, step.as_text()


@pytest.fixture(scope="module")
def single_device():
    return train_on_mesh(MeshConfig(data=1), jax.devices()[:1])


@pytest.mark.parametrize("mesh", MESHES, ids=["x".join(map(str, m)) for m in MESHES])
def test_expert_parallel_losses_equal_single_device(single_device, mesh):
    expected, _, _ = single_device
    history, state, hlo = train_on_mesh(MeshConfig(*mesh))
    assert min(m["dropped_frac"] for m in expected) > 0
    for key in ("loss", "balance_loss", "dropped_frac", "expert_load/3"):
        np.testing.assert_allclose([m[key] for m in history], [m[key] for m in expected], rtol=1e-4, err_msg=key)
    moe = state.params["blocks"]["layers"]["block_1"]["moe"]
    layers, experts, d, _, d_ff = moe["experts"]["up_gate"].shape
    data_ways, model_ways, expert_ways = mesh
    local_experts, local_ff = experts // expert_ways, d_ff // model_ways
    assert sharding.shard_shapes(moe["experts"]["up_gate"]) == {(layers, local_experts, d, 2, local_ff)}
    assert sharding.shard_shapes(moe["experts"]["down"]) == {(layers, local_experts, local_ff, d)}
    if expert_ways > 1:
        assert "all-to-all" in hlo


def test_metrics_report_every_expert_load(single_device):
    metrics = single_device[0][0]
    assert sum(metrics[f"expert_load/{i}"] for i in range(CFG.options.num_experts)) == pytest.approx(1.0)
    assert {"balance_loss", "dropped_frac", "router_entropy"} <= set(metrics)


def test_scanned_and_unrolled_stacks_compute_the_same_function():
    cfg = CFG.replace(n_layers=5, moe_every=2, capacity_factor=2.0, unroll_layers=False)  # the scan looped
    unrolled = cfg.replace(scan_layers=False)
    tokens = jax.random.randint(jax.random.key(0), (2, cfg.seq_len), 0, cfg.vocab_size)
    params = nn.unbox(jax.jit(Switch(unrolled).init)(jax.random.key(1), tokens)["params"])
    blocks = params["blocks"]
    scanned = {**params, "blocks": stack_params(layer_params(blocks, 5, 2), 2)}
    assert "moe" in blocks["layers_0"]["block_1"] and "moe" not in blocks["layers_0"]["block_0"]
    assert set(blocks["tail"]) == {"block_0"} and "mlp" in blocks["tail"]["block_0"]
    np.testing.assert_allclose(
        jax.jit(Switch(cfg).apply)({"params": scanned}, tokens),
        jax.jit(Switch(unrolled).apply)({"params": params}, tokens),
        rtol=1e-5, atol=1e-5,
    )


def test_counts_active_and_total_parameters():
    counts = get_architecture("switch").counts(CFG)
    dense = get_architecture("gpt").counts(CFG)
    expert_mlp = 3 * CFG.d_model * CFG.d_ff
    router = CFG.d_model * CFG.options.num_experts
    assert counts.params == dense.params + (CFG.options.num_experts - 1) * expert_mlp + router
    assert counts.active_params == dense.params + router
    assert counts.flops_per_token > dense.flops_per_token


@pytest.mark.parametrize("capacity_factor", [1.0, 0.5])
def test_analytic_flops_match_compiled_cost_analysis(capacity_factor):
    # Unrolled layers: XLA's cost analysis counts a scanned (while-loop) body only once. Capacity factor
    # at most 1.0: XLA also counts the experts' idle slots (at 1.25 it is 9.8% above the analytic
    # count); at 0.5 the experts compute half the tokens' FFNs (15% of this step).
    cfg = model_config(
        "switch", d_model=256, n_layers=2, n_heads=4, d_ff=704, seq_len=128, vocab_size=256,
        num_experts=8, group_size=256, capacity_factor=capacity_factor, scan_layers=False,
    )
    analytic = get_architecture("switch").counts(cfg).flops_per_token * 4 * cfg.seq_len
    xla = compiled_step_flops(cfg, 4)
    assert xla == pytest.approx(analytic, rel=0.05), f"analytic {analytic:.4g} vs XLA {xla:.4g}"


@pytest.mark.parametrize(
    "change, mesh, flag",
    [
        (dict(num_experts=6), MeshConfig(data=2, expert=4), "--num_experts"),
        (dict(group_size=48), MeshConfig(data=8), "--group_size"),
        (dict(group_size=256), MeshConfig(data=8), "--group_size"),
    ],
)
def test_bad_expert_layouts_are_usage_errors(change, mesh, flag):
    with pytest.raises(UsageError) as error:
        get_architecture("switch").check_fits(sharding.make_mesh(mesh), CFG.replace(**change), 8)
    assert error.value.flag == flag


@pytest.mark.parametrize(
    "change, flag",
    [(dict(capacity_factor=0.0), "--capacity_factor"), (dict(eval_capacity_factor=-1.0), "--eval_capacity_factor"),
     (dict(moe_every=3), "--moe_every")],
)
def test_bad_moe_options_are_usage_errors(change, flag):
    with pytest.raises(UsageError) as error:
        CFG.replace(**change).validate()
    assert error.value.flag == flag


def test_cli_refuses_bad_expert_count_with_one_line_and_nothing_written(tmp_path):
    workdir = tmp_path / "run"
    result = run_command("experiments.train", "--arch", "switch", "--d_model", "32", "--n_layers", "2", "--n_heads",
                         "2", "--num_experts", "6", "--mesh", "data=2,expert=4", "--batch_size", "8", "--data",
                         "synthetic", "--workdir", str(workdir), devices=8)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --num_experts: 6 is not divisible by the expert mesh axis 4"]
    assert not workdir.exists()
