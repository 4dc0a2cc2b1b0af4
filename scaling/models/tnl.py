"""TransNormerLLM (Qin et al. 2023, arXiv 2307.14995) trained with Lightning Attention-2 (arXiv 2401.04658).

x = sqrt(d) embed(tokens); x += GLA(SRMSNorm(x)); x += SGLU(SRMSNorm(x)); logits = W_out SRMSNorm(x)
                                                                                 (REFERENCE.md section 5)

GLA (section 3.3): q = SiLU(x W_q), k = SiLU(x W_k), v = x W_v, u = x W_u (one fused kernel);
o = causal linear attention with the fixed decay lambda_{h,l} (eq. 10, official code), no 1/sqrt(d);
out = W_o (u * SRMSNorm(o)), SRMSNorm over the whole hidden dim. SGLU (section 3.3): W_3 (W_1 x * W_2 x).
SRMSNorm (section 3.4) is RMSNorm without a gain. Each block looks its decays up by its layer index,
so `scan_layers` still compiles one block. Position (section 3.1): the decay in every block and, in the
first only, LRPE on q and k (LRPE-d; the paper's "Mix" and the released models' setting), that block
being the stack's unscanned prefix.
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scaling import flops
from scaling.config import ArchOptions, ModelConfig, UsageError, option
from scaling.nn.attention import decoding
from scaling.nn.linear import dense
from scaling.nn.linear_attention import chunk_plan, linear_attention, recurrent
from scaling.nn.lm import LanguageModel
from scaling.nn.lrpe import LRPE
from scaling.nn.mlp import GatedMLP
from scaling.nn.norms import RMSNorm, rms_normalize
from scaling.nn.stack import Context


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2022): 2^(-8 (h+1) / H); for H not a power of two, the slopes of
    the nearest lower power of two followed by every other slope of twice that (the ALiBi interleave)."""
    if math.log2(n_heads).is_integer():
        return [2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)]
    closest = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def layer_decays(n_heads: int, n_layers: int) -> np.ndarray:
    """lambda_{l,h} = exp(-slope_h (1 - l / (L - 1) + 1e-5)) as float32 [layers, heads] (official code;
    a single layer takes l / (L - 1) = 0). The +1e-5 keeps the last layer's decay strictly below 1."""
    depth = np.arange(n_layers) / max(n_layers - 1, 1)
    slopes = np.asarray(alibi_slopes(n_heads))[None, :] * (1.0 - depth[:, None] + 1e-5)
    decays = np.exp(-slopes).astype(np.float32)
    if not np.all((decays > 0) & (decays < 1)):
        raise UsageError("--n_heads", "these heads and layers give a decay outside (0, 1); use fewer heads")
    return decays


TRAINING_FORMS = ("auto", "chunked", "pallas", "parallel")


@dataclasses.dataclass(frozen=True)
class TNLOptions(ArchOptions):
    """Lightning Attention's chunking and form, LRPE on the first layer (on by default), the embedding scale
    and the residual outputs' init."""

    chunk_size: int = option(64, "Lightning Attention chunk size, a power of two.")
    lightning_form: str = option("auto", "Lightning Attention's form: auto (pallas, its fused kernels, on a GPU; "
                                         "chunked, XLA ops, elsewhere), chunked, pallas or parallel.")
    lrpe: bool = option(True, "LRPE on the first layer, the paper's choice ('Mix'; --nolrpe: decay alone).")
    scale_embedding: bool = option(True, "Multiply the token embeddings by sqrt(d_model) (the official code's "
                                         "default, no_scale_embedding=False).")
    official_init: bool = option(True, "Initialise the residual outputs (W_o, W_3) with --init_std like every "
                                       "other projection, as the released code does (--noofficial_init: "
                                       "--init_std / sqrt(2L), GPT-2's rule, as `gpt`).")

    def validate(self, cfg: ModelConfig) -> None:
        if self.chunk_size < 1 or self.chunk_size & (self.chunk_size - 1):
            raise UsageError("--chunk_size", "must be a power of two (e.g. 64)")
        if self.lightning_form not in TRAINING_FORMS:
            raise UsageError("--lightning_form", f"must be one of {', '.join(TRAINING_FORMS)}")
        layer_decays(cfg.n_heads, cfg.n_layers)


class GatedLinearAttention(nn.Module):
    """The TNL token mixer; decoding carries the recurrent state KV [batch, heads, d_k, d_v] in 'cache'."""

    config: ModelConfig
    lrpe: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, decay: jax.Array) -> jax.Array:
        cfg = self.config
        qkvu = dense(cfg, (4, cfg.n_heads, cfg.d_head), ("embed", None, "heads", "kv"), name="qkvu")(x)
        q, k, v, u = jnp.unstack(qkvu, axis=2)
        q, k = nn.silu(q), nn.silu(k)
        if self.lrpe:
            lrpe = LRPE(name="lrpe")
            q, k = lrpe(q, positions), lrpe(k, positions)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "kv"))
        k = nn.with_logical_constraint(k, ("batch", "length", "heads", "kv"))
        if decoding(self):
            state = self.variable("cache", "state", jnp.zeros, (x.shape[0], cfg.n_heads, q.shape[-1], cfg.d_head))
            o, state.value = recurrent(q, k, v, decay, state.value)
        else:
            o = linear_attention(q, k, v, decay, form=cfg.options.lightning_form, chunk_size=cfg.options.chunk_size)
        o = rms_normalize(o.reshape(o.shape[:2] + (-1,))).reshape(u.shape)
        scaled = not cfg.options.official_init
        return dense(cfg, cfg.d_model, ("heads", "kv", "embed"), in_dims=2, residual=scaled, name="out")(u * o)


class Block(nn.Module):
    """One TNL block; its decays are row `context.layer` of the model's [layers, heads] table."""

    config: ModelConfig
    lrpe: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, context: Context) -> jax.Array:
        cfg = self.config
        decay = jnp.asarray(layer_decays(cfg.n_heads, cfg.n_layers))[context.layer]
        attn = GatedLinearAttention(cfg, self.lrpe, name="attn")
        x = x + attn(rms_normalize(x), context.positions, decay)
        mlp = GatedMLP(cfg, activation=None, scaled_residual=not cfg.options.official_init, name="mlp")
        x = x + mlp(rms_normalize(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def TNL(config: ModelConfig) -> LanguageModel:  # noqa: N802 (a model constructor, used like a class)
    """tokens [batch, length] -> float32 logits [batch, length, vocab]; with LRPE, the first block
    (the only one with LRPE) is the stack's unscanned prefix."""
    prefix = (functools.partial(Block, lrpe=True),) if config.options.lrpe else ()
    return LanguageModel(config, pattern=(Block,), prefix=prefix,
                         final_norm=functools.partial(RMSNorm, use_scale=False),
                         embed_scale=math.sqrt(config.d_model) if config.options.scale_embedding else 1.0)


def linear_attention_flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token of the chunked kernel, counted as the work it does (linear in T):
    forward 2c(d_k + d_v) + 4 d_k d_v (masked chunk product; state update and read-out), backward
    2c(3 d_k + 2 d_v) + 10 d_k d_v (Algorithm 2, which recomputes Q K^T and the states), per head
    and layer, times the zero padding of the last chunk; d_k doubles on the LRPE layer."""
    c, n = chunk_plan(cfg.seq_len, cfg.options.chunk_size)
    d_v = cfg.d_head
    total = 0.0
    for layer in range(cfg.n_layers):
        d_k = 2 * cfg.d_head if cfg.options.lrpe and layer == 0 else cfg.d_head
        total += 2 * c * (4 * d_k + 3 * d_v) + 14 * d_k * d_v
    return total * cfg.n_heads * n * c / cfg.seq_len


def tnl_counts(cfg: ModelConfig) -> flops.Counts:
    """Counts for TNL under scaling.flops' convention for matmuls (6 x parameters) plus the chunked
    kernel's actual work. It also checks the decays, before anything is written."""
    layer_decays(cfg.n_heads, cfg.n_layers)
    d = cfg.d_model
    attn_proj = 5 * d * cfg.n_heads * cfg.d_head
    mlp = 3 * d * cfg.d_ff
    lrpe = cfg.n_heads * cfg.d_head if cfg.options.lrpe else 0
    nonembed = cfg.n_layers * (attn_proj + mlp) + lrpe
    total = nonembed + 2 * cfg.vocab_size * d
    matmul = cfg.n_layers * (attn_proj + mlp) + d * cfg.vocab_size
    per_token = 6.0 * matmul + linear_attention_flops_per_token(cfg)
    return flops.Counts(params=total, nonembed_params=nonembed, active_params=total, flops_per_token=per_token)
