"""Mixture-of-Depths and MoDE (REFERENCE.md section 4): routing properties, each public-implementation
pitfall made impossible, sharding, FLOPs, causal routing, bad input."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import run_command
from test_flops import compiled_step_flops
from test_sharding import train_on_mesh

from scaling import sharding
from scaling.config import MeshConfig, UsageError
from scaling.models.gpt import Block
from scaling.models.registry import get_architecture, model_config
from scaling.nn.mod import RoutedBlock, routed_tokens, top_k_routing
from scaling.nn.stack import Context
from scaling.sample import Decoder
from scaling.train.evaluation import EVAL_SEED
from scaling.train.loop import train
from scaling.train.run import Run
from scaling.train.steps import token_cross_entropy

CFG = model_config("mod", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=32, mod_capacity=0.25)
K = routed_tokens(0.25, 32)


def routed_layer(cfg=CFG, seed=0):
    """(layer, params, x [2, 32, d], positions) of one RoutedBlock around a GPT block."""
    layer = RoutedBlock(cfg, Block)
    x = jax.random.normal(jax.random.key(seed), (2, cfg.seq_len, cfg.d_model))
    positions = jnp.broadcast_to(jnp.arange(cfg.seq_len), (2, cfg.seq_len))
    params = nn.unbox(layer.init(jax.random.key(seed + 1), x, Context(positions, 1))["params"])
    # A router of unit scale, so that routed updates are not negligibly small.
    params["router"]["kernel"] = jax.random.normal(jax.random.key(seed + 2), params["router"]["kernel"].shape)
    return layer, params, x, positions


def apply(layer, params, x, context):
    return layer.apply({"params": params}, x, context, mutable=("aux_loss", "metrics"))


def router_scores(params, x):
    return (x @ params["router"]["kernel"])[..., 0]


def test_selected_tokens_are_each_rows_top_k_and_the_rest_pass_through_bit_exactly():
    layer, params, x, positions = routed_layer()
    out, _ = apply(layer, params, x, Context(positions, 1))
    scores = router_scores(params, x)
    for row in range(2):
        expected = set(np.argsort(np.asarray(scores[row]))[-K:].tolist())
        changed = set(np.flatnonzero(np.any(np.asarray(out[row] != x[row]), axis=-1)).tolist())
        assert changed == expected  # per row, never over the flattened batch
    rows_differ = set(np.argsort(np.asarray(scores[0]))[-K:]) != set(np.argsort(np.asarray(scores[1]))[-K:])
    assert rows_differ
    unselected = np.ones((2, CFG.seq_len), bool)
    unselected[np.arange(2)[:, None], np.asarray(top_k_routing(scores, K))] = False
    np.testing.assert_array_equal(np.asarray(out)[unselected], np.asarray(x)[unselected])


def test_ties_still_select_exactly_k_tokens_per_row():
    chosen = top_k_routing(jnp.zeros((3, 32)), K)
    assert chosen.shape == (3, K) and all(len(set(row)) == K for row in np.asarray(chosen).tolist())


def test_capacity_one_is_the_plain_block_with_its_residual_scaled_by_r():
    cfg = CFG.replace(mod_capacity=1.0)
    layer, params, x, positions = routed_layer(cfg)
    out, _ = apply(layer, params, x, Context(positions, 1))
    plain = Block(cfg).apply({"params": params["block"]}, x, Context(positions, 1))
    r = router_scores(params, x)[..., None]
    np.testing.assert_allclose(out, x + r * (plain - x), rtol=1e-5, atol=1e-5)  # not r (x + f), not x + x + r f


def test_routed_tokens_see_their_true_positions():
    layer, params, x, positions = routed_layer()
    out, _ = apply(layer, params, x, Context(positions, 1))
    scores = router_scores(params, x)
    chosen = top_k_routing(scores, K)
    member = jnp.zeros((2, CFG.seq_len), bool).at[jnp.arange(2)[:, None], chosen].set(True)
    # The plain block over the whole sequence with the other tokens masked out, at true positions.
    masked = Block(CFG).apply({"params": params["block"]}, x, Context(positions, 1, mask=member))
    take = lambda a: jnp.take_along_axis(a, chosen[..., None], axis=1)
    r = jnp.take_along_axis(scores, chosen, axis=1)[..., None]
    np.testing.assert_allclose(take(out), take(x) + r * (take(masked) - take(x)), rtol=1e-4, atol=1e-5)
    # Positions 0..k-1 (the pitfall) give a different result, so the check above can fail.
    wrong = Block(CFG).apply({"params": params["block"]},
                             take(x), Context(jnp.broadcast_to(jnp.arange(K), (2, K)), 1))
    assert not np.allclose(take(out), take(x) + r * (wrong - take(x)), atol=1e-4)


def test_router_gets_a_gradient_and_the_bce_is_on_sigmoid_probabilities():
    layer, params, x, positions = routed_layer()

    def loss(p):
        out, sown = apply(layer, p, x, Context(positions, 1))
        return jnp.sum(out**2), sown

    grads, sown = jax.grad(loss, has_aux=True)(params)
    assert float(jnp.linalg.norm(grads["router"]["kernel"])) > 0
    assert float(jnp.linalg.norm(grads["predictor"]["hidden"]["kernel"])) == 0  # stop_gradient: no LM-loss path
    predictor = params["predictor"]
    hidden = jax.nn.silu(x @ predictor["hidden"]["kernel"])
    logits = (hidden @ predictor["logit"]["kernel"])[..., 0]
    member = jnp.zeros((2, CFG.seq_len)).at[jnp.arange(2)[:, None], top_k_routing(router_scores(params, x), K)].set(1)
    p = jax.nn.sigmoid(logits)
    manual = -jnp.mean(member * jnp.log(p) + (1 - member) * jnp.log(1 - p))
    assert float(sown["metrics"]["mod_bce"][0]) == pytest.approx(float(manual), rel=1e-4)
    assert float(sown["aux_loss"]["mod_aux_loss"][0]) == pytest.approx(0.01 * float(manual), rel=1e-4)
    assert float(sown["metrics"]["mod_routed_frac"][0]) == pytest.approx(K / CFG.seq_len)
    accuracy = jnp.mean(((logits > 0) == (member > 0)).astype(jnp.float32))
    assert float(sown["metrics"]["mod_accuracy"][0]) == pytest.approx(float(accuracy))


def test_router_variant_trains_the_router_sigmoid():
    layer, params, x, positions = routed_layer(CFG.replace(mod_causal="router"))
    assert "predictor" not in params
    aux = lambda p: apply(layer, p, x, Context(positions, 1))[1]["aux_loss"]["mod_aux_loss"][0]
    assert float(jnp.linalg.norm(jax.grad(aux)(params)["router"]["kernel"])) > 0
    scores = router_scores(params, x)
    member = jnp.zeros((2, CFG.seq_len)).at[jnp.arange(2)[:, None], top_k_routing(scores, K)].set(1)
    assert float(aux(params)) == pytest.approx(0.01 * float(jnp.mean(optax.sigmoid_binary_cross_entropy(scores, member))),
                                               rel=1e-4)


def test_every_routed_layer_has_its_own_router_and_the_model_is_jittable():
    cfg = CFG.replace(n_layers=4)
    tokens = jax.random.randint(jax.random.key(0), (2, cfg.seq_len), 0, 256)
    model = get_architecture("mod").model(cfg)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), tokens)["params"])
    routers = params["blocks"]["layers"]["block_1"]["router"]["kernel"]
    assert routers.shape == (2, cfg.d_model, 1) and not np.allclose(routers[0], routers[1])
    assert "router" not in params["blocks"]["layers"]["block_0"]
    logits = jax.jit(model.apply)({"params": params}, tokens)
    assert logits.shape == (2, cfg.seq_len, 256)


def test_threshold_routing_is_causal_and_differs_from_top_k():
    tokens = jax.random.randint(jax.random.key(0), (2, CFG.seq_len), 0, 256)
    model = get_architecture("mod").model(CFG)
    params = nn.unbox(model.init(jax.random.key(1), tokens)["params"])
    params["blocks"]["layers"]["block_1"]["router"]["kernel"] *= 100.0
    causal = lambda t: model.apply({"params": params}, t, autoregressive=True, mutable="metrics")
    (a, sown), (b, _) = causal(tokens), causal(tokens.at[:, 20:].set((tokens[:, 20:] + 1) % 256))
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-5)  # no position depends on later tokens
    routed = float(sown["metrics"]["blocks"]["layers"]["block_1"]["mod_routed_frac"][0][0])
    assert 0 < routed < 1  # the predictor really rejects some tokens
    top_k = model.apply({"params": params}, tokens)
    assert not np.allclose(a, top_k, atol=1e-4)
    # Top-k routing looks ahead: later tokens move earlier positions' outputs (so eval reports both passes).
    top_k_changed = model.apply({"params": params}, tokens.at[:, 20:].set((tokens[:, 20:] + 1) % 256))
    assert not np.allclose(top_k[:, :20], top_k_changed[:, :20], atol=1e-4)
    assert CFG.options.looks_ahead and model_config("mode", mode_variant="staged").options.looks_ahead
    assert not model_config("mode", mode_variant="integrated", noop_experts=1).options.looks_ahead


def test_a_run_reports_the_loss_of_the_pass_sampling_takes(tiny_train, tmp_path):
    cfg = model_config("mod", vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=32,
                       mod_capacity=0.25)
    summary = train(cfg, tiny_train, MeshConfig(), str(tmp_path))
    metrics = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    evals = [m for m in metrics if m["eval_loss"] is not None]
    assert len(evals) == 4 and all(m["eval_causal_loss"] != m["eval_loss"] for m in evals)
    assert (summary["final_eval_loss"], summary["final_eval_causal_loss"]) == (evals[-1]["eval_loss"],
                                                                              evals[-1]["eval_causal_loss"])
    # The same number from the final checkpoint, computed directly with the autoregressive pass.
    steps = tiny_train.steps(cfg.seq_len)
    params = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(steps) / "default")["params"]
    run = Run(cfg, tiny_train, sharding.make_mesh(MeshConfig()))
    loader, model = run.loader("eval", seed=EVAL_SEED), get_architecture("mod").model(cfg)
    sums = [token_cross_entropy(model.apply({"params": params}, b["inputs"], autoregressive=True), b["targets"],
                                b["weights"]) for b in map(loader, range(tiny_train.eval_batches))]
    total, count = np.sum(jax.device_get(sums), axis=0)
    assert summary["final_eval_causal_loss"] == pytest.approx(total / count, rel=1e-5)


def test_decoding_one_sequence_skips_blocks_its_tokens_do_not_take():
    cfg = CFG.replace(seq_len=16)
    tokens = jax.random.randint(jax.random.key(0), (1, 16), 0, 256)
    model = get_architecture("mod").model(cfg)
    params = nn.unbox(model.init(jax.random.key(1), tokens)["params"])
    full, sown = model.apply({"params": params}, tokens, autoregressive=True, mutable="metrics")
    decoder = Decoder(cfg, params, 16)
    steps = [decoder(tokens[:, :4])] + [decoder(tokens[:, t : t + 1]) for t in range(4, 16)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)
    assert 0 < float(sown["metrics"]["blocks"]["layers"]["block_1"]["mod_routed_frac"][0][0]) < 1


@pytest.mark.parametrize("arch, options, mesh", [
    ("mod", {}, (2, 4, 1)),
    ("mode", {"num_experts": 4, "group_size": 16, "mode_variant": "integrated", "noop_experts": 2}, (2, 2, 2)),
], ids=["mod-data-model", "mode-integrated-all"])  # staged MoDE's parts: mod here, experts in test_switch
def test_sharded_training_equals_single_device(arch, options, mesh):
    cfg = model_config(arch, vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64, seq_len=32,
                       mod_capacity=0.25, **options)
    expected, _ = train_on_mesh(cfg, MeshConfig(data=1), jax.devices()[:1])
    losses, state = train_on_mesh(cfg, MeshConfig(*mesh))
    np.testing.assert_allclose(losses, expected, rtol=1e-4)
    assert losses[-1] < losses[0]
    qkv = state.params["blocks"]["layers"]["block_1"]
    qkv = (qkv["block"] if "block" in qkv else qkv)["attn"]["qkv"]["kernel"]
    assert sharding.shard_shapes(qkv) == {qkv.shape[:3] + (qkv.shape[3] // mesh[1], qkv.shape[4])}


@pytest.mark.parametrize("arch, options", [
    ("mod", {}),
    ("mod", {"mod_causal": "router", "route_every": 1}),
    ("mode", {"num_experts": 4, "capacity_factor": 1.0, "group_size": 64}),
], ids=["mod", "mod-router-every-block", "mode-staged"])
def test_analytic_flops_match_compiled_cost_analysis(arch, options):
    # Unrolled layers (XLA counts a scanned body once); capacity 0.125 of 512 tokens: 64 per row.
    cfg = model_config(arch, d_model=256, n_layers=2, n_heads=4, d_ff=704, seq_len=512, vocab_size=256,
                       scan_layers=False, **options)
    analytic = get_architecture(arch).counts(cfg).flops_per_token * 4 * cfg.seq_len
    assert compiled_step_flops(cfg, 4) == pytest.approx(analytic, rel=0.10)


def test_routed_blocks_cost_what_their_capacity_says():
    gpt = model_config("gpt", d_model=256, n_layers=4, n_heads=4, d_ff=704, seq_len=512)
    mod = model_config("mod", d_model=256, n_layers=4, n_heads=4, d_ff=704, seq_len=512, mod_capacity=0.125)
    gpt_flops, mod_flops = (get_architecture(c.arch).counts(c).flops_per_token for c in (gpt, mod))
    head = 6 * 256 * 256
    # Half the blocks at 1/8 of the tokens: (2 + 2/8) / 4 of the block FLOPs, up to routers and c^2 attention.
    assert (mod_flops - head) / (gpt_flops - head) == pytest.approx((2 + 2 / 8) / 4, abs=0.03)


@pytest.mark.parametrize("change, flag", [
    (dict(mod_capacity=0.0), "--mod_capacity"),
    (dict(mod_capacity=1.5), "--mod_capacity"),
    (dict(mod_capacity=0.01), "--mod_capacity"),  # k = 0 tokens at seq_len 32
    (dict(route_every=0), "--route_every"),
    (dict(route_every=3), "--route_every"),  # more than n_layers
])
def test_bad_mod_options_are_usage_errors(change, flag):
    with pytest.raises(UsageError) as error:
        CFG.replace(**change).validate()
    assert error.value.flag == flag


@pytest.mark.parametrize("args, flag", [
    (["--arch", "mode", "--mode_variant", "sideways"], "--mode_variant"),
    (["--arch", "mode", "--mode_variant", "integrated", "--noop_experts", "2", "--num_experts", "0"], "--num_experts"),
    (["--arch", "mode", "--mode_variant", "integrated"], "--noop_experts"),
    (["--arch", "mod", "--mod_capacity", "0.001"], "--mod_capacity"),
])
def test_cli_refuses_bad_mod_flags_with_one_line_and_nothing_written(tmp_path, args, flag):
    workdir = tmp_path / "run"
    result = run_command("experiments.train", *args, "--workdir", str(workdir))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and flag in lines[0], result.stderr
    assert not workdir.exists()
