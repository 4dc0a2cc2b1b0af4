"""Properties of the baseline's layers: RoPE (and how its sines compile), RMSNorm, the masked softmax's
derivative, what scanned layers keep for the backward pass, causality, logical axis names, size family."""
import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import ModelConfig, UsageError
from scaling.models.gpt import GPT, gpt_counts
from scaling.nn import attention
from scaling.nn.attention import masked_softmax
from scaling.nn.norms import RMSNorm
from scaling.nn.rope import apply_rope
from scaling.nn.stack import matmuls_saveable
from scaling.shapes import nonembed_params, shape_for_params


def _rope_at(x, position):
    return apply_rope(x[None, None, None, :], jnp.full((1, 1), position), max_length=128)[0, 0, 0]


def test_rope_scores_depend_only_on_relative_position():
    q, k = jax.random.normal(jax.random.key(0), (2, 64))
    scores = {(m, n): float(_rope_at(q, m) @ _rope_at(k, n)) for m, n in [(5, 2), (13, 10), (103, 100), (3, 0)]}
    np.testing.assert_allclose(list(scores.values()), scores[(3, 0)], rtol=1e-4)
    assert abs(float(_rope_at(q, 7) @ _rope_at(k, 2)) - scores[(3, 0)]) > 1e-3


def test_rope_preserves_norms_and_is_identity_at_zero():
    x = jax.random.normal(jax.random.key(1), (2, 16, 3, 32))
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))
    rotated = apply_rope(x, positions, max_length=16)
    np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(rotated[:, 0], x[:, 0], atol=1e-6)


def test_rope_tables_give_the_formula_and_nan_past_their_length():
    """The looked-up cos and sin are those of position * base^(-2i/d); a position past the tables is NaN."""
    x = jax.random.normal(jax.random.key(2), (1, 3, 1, 8))
    positions = jnp.array([[0, 7, 9]])
    angles = positions[0, :, None] * 10000.0 ** (-jnp.arange(4) / 4)
    x1, x2 = x[0, :, 0, :4], x[0, :, 0, 4:]
    expected = jnp.concatenate([x1 * jnp.cos(angles) - x2 * jnp.sin(angles),
                                x1 * jnp.sin(angles) + x2 * jnp.cos(angles)], axis=-1)
    rotated = apply_rope(x, positions, max_length=8)[0, :, 0]
    np.testing.assert_allclose(rotated[:2], expected[:2], rtol=1e-5, atol=1e-6)
    assert bool(jnp.isnan(rotated[2]).all())


def _elements_of_fusions_that_take_sines(hlo: str) -> list[int]:
    """Output sizes of the fusions in compiled HLO text whose computation evaluates a sine or cosine."""
    trig = set()
    for computation in re.split(r"\n\n", hlo):
        if re.search(r" (sine|cosine)\(", computation):
            trig.add(computation.split()[0].lstrip("%"))
    sizes = []
    for shape, called in re.findall(r"= \w+\[([\d,]*)\]\S* fusion\(.*calls=%([\w.\-]+)", hlo):
        if called in trig:
            sizes.append(int(np.prod([int(n) for n in shape.split(",") if n])))
    return sizes


def test_compiled_rope_takes_each_sine_once_per_position_not_per_head(tiny_model):
    """In the compiled gradient of the model, no fusion evaluates a sine or cosine for more elements than
    batch x length x d_head / 2: they are not recomputed for every head and half of q and k (benchmarks/
    README.md, CPU: XLA fused them into the rotation; without that a CPU train step took 7% less time)."""
    model = GPT(tiny_model)
    tokens = jnp.zeros((2, tiny_model.seq_len), jnp.int32)
    params = model.init(jax.random.key(0), tokens)
    hlo = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, tokens) ** 2))).lower(params).compile().as_text()
    sizes = _elements_of_fusions_that_take_sines(hlo)
    assert sizes and max(sizes) <= 2 * tiny_model.seq_len * tiny_model.d_head // 2


def test_rmsnorm_unit_rms_in_float32():
    x = jax.random.normal(jax.random.key(2), (4, 8, 32), jnp.bfloat16) * 7
    y, _ = RMSNorm().init_with_output(jax.random.key(0), x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.square(y.astype(jnp.float32)), -1)), 1.0, rtol=1e-2)


def test_masked_softmax_derivatives_equal_those_through_its_formula():
    scores = jax.random.normal(jax.random.key(3), (2, 5, 6))
    visible = jnp.tril(jnp.ones((5, 6), bool), k=1).at[0].set(False)  # row 0 sees nothing: uniform
    cotangent = jax.random.normal(jax.random.key(4), scores.shape)

    def through_formula(s):
        return jax.nn.softmax(jnp.where(visible, s, jnp.finfo(s.dtype).min), axis=-1)

    ours, grad = jax.vjp(lambda s: masked_softmax(s, visible), scores)
    expected, expected_grad = jax.vjp(through_formula, scores)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    np.testing.assert_allclose(grad(cotangent)[0], expected_grad(cotangent)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jvp(lambda s: masked_softmax(s, visible), (scores,), (cotangent,))[1],
                               jax.jvp(through_formula, (scores,), (cotangent,))[1], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(grad(cotangent)[0][:, 0]).max()) == 0.0


def test_causal_query_blocks_equal_one_masked_square(monkeypatch):
    """Blocked causal attention (blocks of 4 over 10 tokens, the last one short) equals the whole T x T
    masked softmax, outputs and gradients, with and without a key mask (token 0 present: every query
    sees a key)."""
    q, k, v, cotangent = (jax.random.normal(jax.random.key(i), (2, 10, 3, 8)) for i in range(4))
    present = jax.random.bernoulli(jax.random.key(5), 0.7, (2, 10)).at[:, 0].set(True)
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
    for mask in (None, present):
        visible = jnp.tril(jnp.ones((10, 10), bool)) & (True if mask is None else mask[:, None, None, :])

        def square(q, k, v, visible=visible):
            heads_major = (jnp.swapaxes(y, 1, 2) for y in (q, k, v))
            return jnp.swapaxes(attention._masked_softmax_attention(*heads_major, 0.3, visible), 1, 2)

        blocked, blocked_grad = jax.vjp(lambda *qkv, mask=mask: attention.causal_attention(*qkv, 0.3, mask), q, k, v)
        expected, expected_grad = jax.vjp(square, q, k, v)
        np.testing.assert_allclose(blocked, expected, rtol=1e-5, atol=1e-6)
        for ours, theirs in zip(blocked_grad(cotangent), expected_grad(cotangent)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_scanned_layers_keep_matmul_and_fused_attention_outputs():
    from jax._src.cudnn import fused_attention_stablehlo as cudnn  # a GPU's flash attention: never rerun
    assert matmuls_saveable(jax.lax.dot_general_p)
    assert matmuls_saveable(cudnn._dot_product_attention_fwd_p_wrapper)
    assert not matmuls_saveable(jax.lax.exp_p)


@pytest.mark.parametrize("scan", [True, False])
def test_gpt_is_causal(tiny_model, scan):
    cfg = dataclasses.replace(tiny_model, scan_layers=scan)
    tokens = jax.random.randint(jax.random.key(3), (2, cfg.seq_len), 0, cfg.vocab_size)
    model = GPT(cfg)
    params = model.init(jax.random.key(0), tokens)
    changed = tokens.at[:, 20:].set((tokens[:, 20:] + 1) % cfg.vocab_size)
    a, b = model.apply(params, tokens), model.apply(params, changed)
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-5)
    assert not np.allclose(a[:, 20:], b[:, 20:], atol=1e-3)


def test_every_parameter_has_logical_axes_and_counts_match(tiny_model):
    boxed = jax.eval_shape(lambda: GPT(tiny_model).init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32)))
    leaves = jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    assert all(len(leaf.names) == leaf.value.ndim for leaf in leaves)
    assert sum(leaf.value.size for leaf in leaves) == gpt_counts(tiny_model).params


def test_init_stds_follow_reference(tiny_model):
    cfg = dataclasses.replace(tiny_model, d_model=256, n_heads=4, d_ff=512, n_layers=8, scan_layers=False)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    assert np.std(params["blocks"]["layers_0"]["block_0"]["attn"]["qkv"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(params["blocks"]["layers_0"]["block_0"]["mlp"]["down"]["kernel"]) == pytest.approx(0.02 / 4, rel=0.05)


def test_size_family_is_deterministic_monotone_and_covers_range():
    base = ModelConfig()
    sizes = [5e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10]
    shapes = [shape_for_params(n, base) for n in sizes]
    actual = [nonembed_params(s.d_model, s.n_layers) for s in shapes]
    assert actual == sorted(actual)
    for target, got, shape in zip(sizes, actual, shapes):
        assert 0.5 < got / target < 2, (target, got)
        assert shape.d_head == 64 and shape.d_ff % 64 == 0
        assert 32 <= shape.d_model / shape.n_layers <= 128
    assert shape_for_params(2e8, base) == shape_for_params(2e8, base)
    with pytest.raises(UsageError):
        shape_for_params(1e3, base)
