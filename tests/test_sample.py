"""Incremental decoding equals the full parallel pass; sampling options; the sample entry point."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import run_command

from scaling.config import MeshConfig
from scaling.models.registry import get_architecture, model_config
from scaling.sample import Decoder, choose, sample
from scaling.train.loop import train

LENGTH, PREFILL = 12, 5

CONFIGS = {
    "gpt": model_config("gpt", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16),
    # Decoding drops no token; the full pass routes in groups of 8, where an eval capacity of 4x the
    # fair share keeps every token, so the two agree.
    "switch": model_config("switch", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16,
                           num_experts=4, group_size=8, eval_capacity_factor=4.0),
    "tnl": model_config("tnl", vocab_size=256, d_model=32, n_layers=3, n_heads=2, d_ff=64, seq_len=16,
                        chunk_size=4, lrpe=True),
    # Routed blocks decode by the predictor's threshold; a full pass with autoregressive=True routes alike.
    "mod": model_config("mod", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16),
    "mode": model_config("mode", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16,
                         num_experts=4, group_size=8, eval_capacity_factor=8.0),
    # Steps of at most num_experts tokens take their experts' gathered weights, no-op experts included.
    "mode-integrated": model_config("mode", vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, seq_len=16,
                                    num_experts=4, group_size=8, eval_capacity_factor=8.0,
                                    mode_variant="integrated", noop_experts=2),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained_like(request):
    """(config, scanned parameters, tokens [2, LENGTH]) of a freshly initialised model."""
    cfg = CONFIGS[request.param]
    tokens = jax.random.randint(jax.random.key(0), (2, LENGTH), 0, cfg.vocab_size)
    params = nn.unbox(get_architecture(cfg.arch).model(cfg).init(jax.random.key(1), tokens)["params"])
    return cfg, params, tokens


def decode_prompt_then_steps(decoder: Decoder, tokens) -> np.ndarray:
    """Logits of tokens [batch, LENGTH] fed as a PREFILL-token prompt, then one token per step."""
    steps = [decoder(tokens[:, :PREFILL])] + [decoder(tokens[:, t : t + 1]) for t in range(PREFILL, LENGTH)]
    return np.concatenate(steps, axis=1)


def test_incremental_logits_equal_the_full_pass(trained_like):
    cfg, params, tokens = trained_like
    full = get_architecture(cfg.arch).model(cfg).apply({"params": params}, tokens, autoregressive=True)
    decoder = Decoder(cfg, params, capacity=LENGTH)
    np.testing.assert_allclose(decode_prompt_then_steps(decoder, tokens), full, rtol=1e-4, atol=1e-4)
    present = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(decoder.cache)[0]
               if path[-1].key == "present"]
    # A token that skips a routed block is not in that block's KV cache; every other cache holds all.
    assert any(not np.all(leaf) for leaf in present) == cfg.options.looks_ahead


@pytest.mark.parametrize("name", [name for name, cfg in sorted(CONFIGS.items()) if hasattr(cfg.options, "num_experts")])
def test_a_sequence_decodes_alike_whatever_its_batch(name):
    """Each of 16 copies of one sequence gets the logits the sequence gets alone, prompt and steps: every
    token of a step goes to one of the 4 experts, four times its fair share, and decoding drops none of
    them, where dispatch at the default eval capacity would drop half. (Without Switch FFNs, decoding
    equals the full pass, which computes each sequence apart.)"""
    cfg = dataclasses.replace(CONFIGS[name], options=dataclasses.replace(CONFIGS[name].options,
                                                                         eval_capacity_factor=2.0))
    tokens = jax.random.randint(jax.random.key(0), (1, LENGTH), 0, cfg.vocab_size)
    params = nn.unbox(get_architecture(cfg.arch).model(cfg).init(jax.random.key(1), tokens)["params"])
    alone = decode_prompt_then_steps(Decoder(cfg, params, capacity=LENGTH), tokens)
    copies = decode_prompt_then_steps(Decoder(cfg, params, capacity=LENGTH), np.repeat(tokens, 16, axis=0))
    np.testing.assert_allclose(copies, np.repeat(alone, 16, axis=0), rtol=1e-5, atol=1e-5)


def test_cache_size(trained_like):
    cfg, params, tokens = trained_like
    sizes = []
    for capacity in (LENGTH, 4 * LENGTH):
        decoder = Decoder(cfg, params, capacity)
        decoder(tokens[:, :2])
        sizes.append(sum(leaf.size for leaf in jax.tree.leaves(decoder.cache)))
    # The recurrent state of linear attention does not grow with the length; a KV cache does.
    assert (sizes[0] == sizes[1]) if cfg.arch == "tnl" else (sizes[1] > sizes[0])


def test_greedy_sampling_feeds_back_the_full_pass_argmax(trained_like):
    """Each greedy token is the argmax of the full pass over the prompt and the tokens before it, so
    the compiled generation loop feeds every token back at its position; top-1 sampling is greedy."""
    cfg, params, tokens = trained_like
    prompt = tokens[:, :PREFILL]
    greedy = sample(cfg, params, prompt, LENGTH - PREFILL, temperature=0.0)
    assert greedy.shape == (2, LENGTH - PREFILL)
    text = np.concatenate([prompt, greedy], axis=1)
    logits = get_architecture(cfg.arch).model(cfg).apply({"params": params}, text, autoregressive=True)
    predicting = np.asarray(logits[:, PREFILL - 1 : -1])
    chosen = np.take_along_axis(predicting, np.asarray(greedy)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(chosen, predicting.max(axis=-1), atol=1e-4)  # a maximiser, up to rounding
    np.testing.assert_array_equal(sample(cfg, params, prompt, LENGTH - PREFILL, temperature=1.0, top_k=1), greedy)


def test_top_k_only_draws_among_the_k_largest():
    logits = jax.numpy.asarray([[0.0, 5.0, 4.0, -1.0]] * 64)
    draws = choose(logits, jax.random.key(0), temperature=10.0, top_k=2)
    assert set(np.asarray(draws).tolist()) == {1, 2}


def run_sample(*args):
    return run_command("experiments.sample", *args)


def test_sample_entry_point(tmp_path, tiny_train):
    cfg = dataclasses.replace(CONFIGS["tnl"], seq_len=32, vocab_size=257)  # pystdlib's bytes + end of document
    train(cfg, dataclasses.replace(tiny_train, eval_every=8, data="pystdlib"), MeshConfig(), str(tmp_path / "run"),
          max_steps=2)
    result = run_sample("--workdir", str(tmp_path / "run"), "--prompt", "import ", "--num_tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("import ")
    missing = run_sample("--workdir", str(tmp_path / "nothing"))
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert missing.returncode == 2 and len(lines) == 1 and "--workdir" in lines[0], missing.stderr
    assert not (tmp_path / "nothing").exists()
