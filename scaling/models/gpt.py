"""Baseline decoder-only GPT: pre-norm RMSNorm, RoPE, causal softmax attention, SwiGLU, untied head.

x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)); logits = W_out RMSNorm(x)   (REFERENCE.md section 1)
"""
import flax.linen as nn
import jax

from scaling.config import ModelConfig
from scaling.flops import Counts
from scaling.nn.attention import CausalSelfAttention
from scaling.nn.lm import LanguageModel
from scaling.nn.mlp import GatedMLP
from scaling.nn.norms import RMSNorm
from scaling.nn.stack import Context


class Block(nn.Module):
    """One pre-norm Transformer block."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: Context) -> jax.Array:
        attn = CausalSelfAttention(self.config, name="attn")
        x = x + attn(RMSNorm(name="attn_norm")(x), context.positions, context.mask)
        x = x + GatedMLP(self.config, name="mlp")(RMSNorm(name="mlp_norm")(x))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def GPT(config: ModelConfig) -> LanguageModel:  # noqa: N802 (a model constructor, used like a class)
    """tokens [batch, length] -> float32 logits [batch, length, vocab]: n_layers `Block`s."""
    return LanguageModel(config, pattern=(Block,))


def block_matmul_params(cfg: ModelConfig) -> int:
    """Matmul parameters of one block: q, k, v, o (4 d H d_h) and the SwiGLU (3 d d_ff)."""
    return 4 * cfg.d_model * cfg.n_heads * cfg.d_head + 3 * cfg.d_model * cfg.d_ff


def block_flops(cfg: ModelConfig, fraction: float = 1.0) -> float:
    """Training FLOPs per token of one block that processes `fraction` of each sequence's tokens (1
    unless routed): 6 x its matmul parameters x fraction, plus attention over the (fraction T)^2
    square, 12 T d_attn x fraction^2 (scaling/flops.py)."""
    attention = 12.0 * cfg.seq_len * cfg.n_heads * cfg.d_head
    return 6.0 * block_matmul_params(cfg) * fraction + attention * fraction**2


def gpt_counts(cfg: ModelConfig) -> Counts:
    """Counts for the baseline GPT (REFERENCE.md section 1): blocks (with two norm gains each), the
    final norm, untied embeddings; FLOPs of every block plus the output head (6 d V)."""
    d = cfg.d_model
    nonembed = cfg.n_layers * (block_matmul_params(cfg) + 2 * d) + d
    total = nonembed + 2 * cfg.vocab_size * d
    flops_per_token = cfg.n_layers * block_flops(cfg) + 6.0 * d * cfg.vocab_size
    return Counts(params=total, nonembed_params=nonembed, active_params=total, flops_per_token=flops_per_token)
