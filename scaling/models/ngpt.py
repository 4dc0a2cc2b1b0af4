"""nGPT: the normalized Transformer on the hypersphere (Loshchilov et al. 2024, arXiv 2410.01131).

Every vector that is dotted with, or written into, the hidden state has unit norm (kept so by
`normalize_matrices` after every optimizer step), hidden states live on the unit sphere, and each
block moves them by two "steps on the sphere" (eqs. 10-11) instead of adding residuals. No norm
layers, no weight decay, no warmup (REFERENCE.md section 2). The shell, attention and gated MLP are
the baseline's (scaling.nn) with nGPT's scaled vectors plugged into their hooks.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scaling import flops
from scaling.config import ModelConfig, TrainConfig
from scaling.models.gpt import gpt_counts
from scaling.nn.attention import CausalSelfAttention
from scaling.nn.lm import LanguageModel
from scaling.nn.mlp import GatedMLP
from scaling.nn.normalize import Scale, l2_normalize
from scaling.nn.stack import Context

# The d_model axis of every matrix, counted from the end (so a leading scanned 'layers' axis does
# not move it), keyed by the module that owns the kernel (or by the embedding table's name).
D_MODEL_AXIS = {
    "embedding": -1,  # [vocab, d]: each token's input row
    "qkv": -4,  # [d, 3, heads, d_head]: input side of W_q, W_k, W_v
    "out": -1,  # [heads, d_head, d]: output side of W_o
    "up_gate": -3,  # [d, 2, d_ff]: input side of W_u and W_gate
    "down": -1,  # [d_ff, d]: output side of W_down
    "unembed": -2,  # [d, vocab]: each token's output row of E_out
}
MATRIX_LEAVES = ("kernel", "embedding")


def scale_specs(cfg: ModelConfig) -> dict[str, tuple[float, float]]:
    """(s_init, s_scale) of every scaled vector (REFERENCE.md section 2 table, paper sec. 2.5)."""
    inv_sqrt_d = 1.0 / math.sqrt(cfg.d_model)
    return {
        "alpha_attn": (0.05, inv_sqrt_d),
        "alpha_mlp": (0.05, inv_sqrt_d),
        "s_qk": (1.0, inv_sqrt_d),
        "s_u": (1.0, 1.0),
        "s_v": (1.0, 1.0),
        "s_z": (1.0, inv_sqrt_d),
    }


def scale(cfg: ModelConfig, name: str, shape: tuple[int, ...], logical_axes: tuple[str, ...]) -> jax.Array:
    """The effective value of the scaled vector `name` (a Scale submodule of the calling module)."""
    init, stored_scale = scale_specs(cfg)[name]
    return Scale(shape, logical_axes, init, stored_scale, name=name)()


def sphere_step(h: jax.Array, branch: jax.Array, alpha: jax.Array) -> jax.Array:
    """h <- Norm(h + alpha * (Norm(branch) - h)), eqs. 10-11, in float32 (|alpha|: eigen learning rates >= 0)."""
    h32 = h.astype(jnp.float32)
    moved = h32 + jnp.abs(alpha) * (l2_normalize(branch.astype(jnp.float32)) - h32)
    return l2_normalize(moved).astype(h.dtype)


class NormalizedQK(nn.Module):
    """q, k <- s_qk * Norm(q), s_qk * Norm(k) per head (eq. 15-16), after RoPE."""

    config: ModelConfig

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        s_qk = scale(cfg, "s_qk", (cfg.n_heads, cfg.d_head), ("heads", "kv"))
        return tuple((s_qk * l2_normalize(x)).astype(x.dtype) for x in (q, k))


class ScaledUpGate(nn.Module):
    """u <- s_u * u, v <- s_v * sqrt(d) * v before u * SiLU(v) (eq. 20-21)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, up: jax.Array, gate: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        s_u = scale(cfg, "s_u", (cfg.d_ff,), ("mlp",))
        s_v = scale(cfg, "s_v", (cfg.d_ff,), ("mlp",)) * math.sqrt(cfg.d_model)
        return up * s_u, gate * s_v


class LogitScale(nn.Module):
    """s_z [vocab]: logits = s_z * (E_out h), a cosine scaled per token (sec. 2.3)."""

    config: ModelConfig

    @nn.compact
    def __call__(self) -> jax.Array:
        return scale(self.config, "s_z", (self.config.vocab_size,), ("vocab",))


class Block(nn.Module):
    """Two steps on the sphere: towards Norm(h_A) with alpha_A, then towards Norm(h_M) with alpha_M.

    Attention: the shared layer with s_qk-scaled unit q and k and softmax scale sqrt(d_h) (eq. 16).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, context: Context) -> jax.Array:
        cfg = self.config
        alpha_attn = scale(cfg, "alpha_attn", (cfg.d_model,), ("embed",))
        alpha_mlp = scale(cfg, "alpha_mlp", (cfg.d_model,), ("embed",))
        attn = CausalSelfAttention(cfg, qk_norm=NormalizedQK, softmax_scale=math.sqrt(cfg.d_head), name="attn")
        h = sphere_step(h, attn(h, context.positions, context.mask), alpha_attn)
        h = sphere_step(h, GatedMLP(cfg, scales=ScaledUpGate, name="mlp")(h), alpha_mlp)
        return nn.with_logical_constraint(h, ("batch", "length", "embed"))


def NGPT(config: ModelConfig) -> LanguageModel:  # noqa: N802 (a model constructor, used like a class)
    """tokens [batch, length] -> float32 logits s_z * (E_out h) [batch, length, vocab]; no norm layers."""
    return LanguageModel(config, pattern=(Block,), final_norm=None, logit_scale=LogitScale)


def _normalize_leaf(path, leaf: jax.Array) -> jax.Array:
    """A matrix renormalised along its d_model axis in float32 (cast back); vectors unchanged."""
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[-1] not in MATRIX_LEAVES:
        return leaf
    owner = keys[-1] if keys[-1] == "embedding" else keys[-2]
    if owner not in D_MODEL_AXIS:
        raise KeyError(f"nGPT post-step: no d_model axis known for matrix {'/'.join(keys)}")
    return l2_normalize(leaf.astype(jnp.float32), axis=D_MODEL_AXIS[owner]).astype(leaf.dtype)


def normalize_matrices(params):
    """Post-step hook: every matrix's d_model vectors back to unit norm (paper sec. 2.6).

    Pure and elementwise apart from a reduction over the d_model ('embed') axis, which no mesh rule
    shards: each device renormalises its own shard, with no gather.
    """
    return jax.tree_util.tree_map_with_path(_normalize_leaf, params)


def normalization_flops_per_token(cfg: ModelConfig) -> float:
    """Forward FLOPs of nGPT's extra elementwise work per token, ~3 per element normalised (square,
    sum, scale): q and k (2 H d_h) and four hidden-size Norms per block, plus the two sphere steps
    (3 d each: subtract, scale, add) and the scaled vectors (s_qk on q, k; s_u, s_v; s_z).
    The per-step renormalisation of the weights (~3 FLOPs per matrix element per step, independent
    of the batch) is not included."""
    d_attn = cfg.n_heads * cfg.d_head
    per_layer = 3 * 2 * d_attn + 3 * 4 * cfg.d_model + 2 * 3 * cfg.d_model + 2 * d_attn + 2 * cfg.d_ff
    return float(cfg.n_layers * per_layer + cfg.vocab_size)


def ngpt_counts(cfg: ModelConfig) -> flops.Counts:
    """The baseline's matmul and attention FLOPs plus `normalization_flops_per_token` (x3 for training).

    Parameters: the baseline's matrices, no norm gains; per block alpha_A, alpha_M (2 d), s_qk (H d_h),
    s_u, s_v (2 d_ff); s_z (V) belongs to the output head (an embedding parameter).
    """
    base = gpt_counts(cfg)
    gains = cfg.n_layers * 2 * cfg.d_model + cfg.d_model
    scales = cfg.n_layers * (2 * cfg.d_model + cfg.n_heads * cfg.d_head + 2 * cfg.d_ff)
    nonembed = base.nonembed_params - gains + scales
    total = nonembed + 2 * cfg.vocab_size * cfg.d_model + cfg.vocab_size
    flops_per_token = base.flops_per_token + 3.0 * normalization_flops_per_token(cfg)
    return flops.Counts(params=total, nonembed_params=nonembed, active_params=total, flops_per_token=flops_per_token)


def optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """nGPT (REFERENCE.md section 2): Adam without weight decay or warmup, cosine decay to 0, clip 1.0.

    `warmup_frac` and `weight_decay` are ignored: the unit-norm constraint replaces both.
    """
    schedule = optax.cosine_decay_schedule(1.0, max(total_steps, 1))
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
    )
    return tx, schedule
