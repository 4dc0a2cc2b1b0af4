"""Mixture-of-Depths routing around a block (Raposo et al. 2024, arXiv 2404.02258, sec. 3).

A routed block has its own scalar router r_i = w . x_i (a linear map d -> 1, no bias; the paper gives
no init: w ~ N(0, init_std^2), the init of every other projection). In training and evaluation
(expert-choice top-k) each sequence's k = capacity x T tokens with the largest r, kept in their
original order and at their original positions (RoPE and the causal mask see true positions), go
through the whole block (attention and MLP) as a [batch, k] sequence, so the saving is real, and
come back as x_i + r_i (f(x)_i - x_i) (eq. 1: the block's residual update scaled by the raw router
output, which puts the router on the gradient path); every other token passes through unchanged.

Top-k over a sequence looks ahead, so sampling routes token t on its own (`context.autoregressive`,
sec. 3.5): with `mod_causal=predictor` a small MLP (d -> d/2 -> SiLU -> 1) on stop_gradient(x),
trained by BCE to predict top-k membership, says > 0.5; with `mod_causal=router`, the router's own
sigmoid, trained by an auxiliary BCE on its logits, does. Such a pass runs the block on every token
with the skipped ones masked out (they neither attend nor are attended to), and when decoding a
skipped token is not written into the block's KV cache (sec. 5).
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scaling.config import ArchOptions, ModelConfig, UsageError, check_choice, option
from scaling.nn.attention import decoding
from scaling.nn.linear import dense
from scaling.nn.stack import Block, Context

CAUSAL_ROUTING = ("predictor", "router")


@dataclasses.dataclass(frozen=True)
class MoDOptions(ArchOptions):
    """Where routed blocks sit, how many tokens they take, and how sampling routes."""

    depth_flag = "--route_every"
    looks_ahead = True  # top-k over each sequence
    mod_capacity: float = option(0.125, "Fraction of each sequence's tokens a routed block processes.")
    route_every: int = option(2, "Every k-th block is routed (2: every other block, the paper's best).")
    mod_causal: str = option("predictor", "How sampling routes: a predictor MLP on stop_gradient(x), or the "
                                          "router's sigmoid trained by an auxiliary BCE.", CAUSAL_ROUTING)
    mod_aux_weight: float = option(0.01, "Weight of the causal-routing BCE in the objective.")

    def validate(self, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if not 0 < self.mod_capacity <= 1:
            raise UsageError("--mod_capacity", "must be in (0, 1] (the paper's best: 0.125)")
        if self.route_every < 1:
            raise UsageError("--route_every", "must be a positive integer (1: every block, 2: every other)")
        if routed_tokens(self.mod_capacity, cfg.seq_len) < 1:
            raise UsageError("--mod_capacity", f"{self.mod_capacity} x --seq_len {cfg.seq_len} routes no token; "
                                               f"use at least {1 / cfg.seq_len:.3g}")
        check_choice(self.mod_causal, "mod_causal", CAUSAL_ROUTING)
        if self.mod_aux_weight < 0:
            raise UsageError("--mod_aux_weight", "must be >= 0")

    def min_layers(self) -> int:
        return self.route_every


def routed_tokens(capacity: float, length: int) -> int:
    """k = floor(capacity x T): the tokens of a T-token sequence a routed block takes (top-k)."""
    return math.floor(capacity * length + 1e-9)


def routing_params(cfg: ModelConfig) -> int:
    """Parameters of one routed layer's router (d) and, with mod_causal=predictor, predictor (d d/2 + d/2)."""
    predictor = cfg.d_model * (cfg.d_model // 2) + cfg.d_model // 2 if cfg.options.mod_causal == "predictor" else 0
    return cfg.d_model + predictor


def routing_flops(cfg: ModelConfig) -> float:
    """Training FLOPs per token of one routed layer's router (6 d, every token) and predictor (4 x its
    parameters: forward and weight gradient; its input is stop_gradient, so no input gradient)."""
    return 6.0 * cfg.d_model + 4.0 * (routing_params(cfg) - cfg.d_model)


def routed_fraction(cfg: ModelConfig) -> float:
    """k / T: the fraction of each training sequence a routed block processes."""
    return routed_tokens(cfg.options.mod_capacity, cfg.seq_len) / cfg.seq_len


def top_k_routing(scores: jax.Array, k: int) -> jax.Array:
    """Indices [batch, k] of each row's k largest scores, in their original (ascending) order."""
    _, chosen = jax.lax.top_k(scores, k)
    return jnp.sort(chosen, axis=-1)


def take_rows(x: jax.Array, indices: jax.Array) -> jax.Array:
    """x[b, indices[b, j]] for x [batch, length, ...] and indices [batch, k]."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


class Predictor(nn.Module):
    """The causal routing predictor: logits [batch, length] of d -> d/2 -> SiLU -> 1 on stop_gradient(x)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        hidden = nn.silu(dense(cfg, cfg.d_model // 2, ("embed", "mlp"), name="hidden")(jax.lax.stop_gradient(x)))
        return dense(cfg, 1, ("mlp", None), name="logit")(hidden)[..., 0].astype(jnp.float32)


class RoutedBlock(nn.Module):
    """`block` behind a Mixture-of-Depths router (see the module docstring); sows the causal-routing
    loss ('aux_loss': mod_aux_loss) and, per routed layer, mod_bce, mod_accuracy (of the predictor,
    or of the router's sigmoid, against top-k membership) and mod_routed_frac ('metrics')."""

    config: ModelConfig
    block: Block

    @nn.compact
    def __call__(self, x: jax.Array, context: Context) -> jax.Array:
        cfg, opts = self.config, self.config.options
        router = dense(cfg, 1, ("embed", None), name="router")(x)[..., 0].astype(jnp.float32)
        causal_logits = Predictor(cfg, name="predictor")(x) if opts.mod_causal == "predictor" else router
        if context.autoregressive:
            return self._causal(x, router, causal_logits > 0, context)
        chosen = top_k_routing(router, max(1, routed_tokens(opts.mod_capacity, x.shape[1])))
        member = jnp.zeros(router.shape, jnp.float32).at[jnp.arange(x.shape[0])[:, None], chosen].set(1.0)
        self._report(causal_logits, member)
        selected = take_rows(x, chosen)
        update = self.block(cfg, name="block")(selected, context.replace(positions=take_rows(context.positions, chosen)))
        scale = take_rows(router, chosen)[..., None].astype(x.dtype)
        routed = selected + scale * (update - selected)
        return x.at[jnp.arange(x.shape[0])[:, None], chosen].set(routed)

    def _causal(self, x, router, taken, context):
        """Threshold routing. Once decoding has started (this block's cache exists), a step in which
        no row takes the block skips it entirely (lax.cond): the sampling-time saving."""
        self.sow("metrics", "mod_routed_frac", jnp.mean(taken.astype(jnp.float32)))
        operands = (x, router, taken, context.positions, context.layer)
        if decoding(self) and self.has_variable("cache", "started"):
            return nn.cond(jnp.any(taken), _through_block, _past_block, self, *operands)
        if decoding(self):
            self.variable("cache", "started", lambda: jnp.ones((), bool))
        return _through_block(self, *operands)

    def _report(self, causal_logits, member) -> None:
        """Sows the causal-routing BCE against top-k membership and the routing metrics."""
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(causal_logits, member))
        self.sow("aux_loss", "mod_aux_loss", self.config.options.mod_aux_weight * bce)
        self.sow("metrics", "mod_bce", bce)
        self.sow("metrics", "mod_accuracy", jnp.mean(((causal_logits > 0) == (member > 0)).astype(jnp.float32)))
        self.sow("metrics", "mod_routed_frac", jnp.mean(member))


def _through_block(module: RoutedBlock, x, router, taken, positions, layer):
    """The causal pass: the block on every token with the skipped ones masked out (they neither attend
    nor are attended to, nor enter a KV cache); only the taken tokens change, to x + r (f(x) - x)."""
    context = Context(positions, layer, autoregressive=True, mask=taken)
    update = module.block(module.config, name="block")(x, context)
    routed = x + router[..., None].astype(x.dtype) * (update - x)
    return jnp.where(taken[..., None], routed, x)


def _past_block(module: RoutedBlock, x, *unused):
    """Every token skips the block."""
    del module, unused
    return x
