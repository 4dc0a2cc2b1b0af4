"""Switch Transformer feed-forward layer: top-1 routing over E SwiGLU experts (Fedus et al. 2021).

Tokens are split into groups [G, S, d] (Mesh-TensorFlow style). Per group, each token goes to the
argmax expert of a float32 router (eq. 1-2) and takes a slot in that expert's buffer of `capacity`
slots by an exclusive cumsum; tokens past capacity are dropped (MoE output 0, so they pass through
the residual). Dispatch and combine are einsums with a one-hot [G, S, E, C] mask. The expert axis of
the expert weights and of the dispatched activations is the logical axis 'expert' while groups are
'batch': on a mesh with an 'expert' axis the compiler turns the change of layout into all-to-alls.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig

BALANCE_COEF = 1e-2  # alpha of eq. 4
JITTER = 1e-2  # router input multiplied by U(1 - JITTER, 1 + JITTER) in training
MIN_CAPACITY = 4


def capacity(group_tokens: int, num_experts: int, factor: float) -> int:
    """Slots per expert and group: ceil(S / E * capacity_factor), at least MIN_CAPACITY."""
    return max(MIN_CAPACITY, math.ceil(group_tokens / num_experts * factor))


def group_size(cfg: ModelConfig, num_tokens: int) -> int:
    """Tokens per routing group: the largest divisor of `num_tokens` that is at most `cfg.group_size`.

    Training batches divide exactly (`sharding.check_fits` refuses others), so this is `cfg.group_size`
    there; smaller groups only occur when evaluating or decoding an arbitrary number of tokens.
    """
    return max(s for s in range(1, min(cfg.group_size, num_tokens) + 1) if num_tokens % s == 0)


def scaled_init(in_axis: int, out_axis, batch_axis=()) -> nn.initializers.Initializer:
    """Truncated normal with std sqrt(0.1 / fan_in), the "10x smaller" init of Switch sec. 2.3."""
    return nn.initializers.variance_scaling(
        0.1, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
    )


def route(logits: jax.Array, slots: int):
    """Top-1 routing of logits [G, S, E] (float32) into `slots` per expert.

    Returns (dispatch [G, S, E, C] one-hot of (expert, position) for kept tokens, gate [G, S] = p of the
    chosen expert, probs [G, S, E], assigned [G, S, E] one-hot argmax before dropping).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    expert = jnp.argmax(probs, axis=-1)
    assigned = jax.nn.one_hot(expert, logits.shape[-1], dtype=jnp.int32)
    position = jnp.sum((jnp.cumsum(assigned, axis=1) - assigned) * assigned, axis=-1)
    kept = assigned * (position < slots)[..., None]
    dispatch = kept[..., None] * jax.nn.one_hot(position, slots, dtype=jnp.int32)[:, :, None, :]
    gate = jnp.max(probs, axis=-1)
    return dispatch, gate, probs, assigned


def balance_loss(probs: jax.Array, assigned: jax.Array) -> jax.Array:
    """alpha * E * sum_i f_i P_i (eq. 4-6) per group, averaged over groups; only P carries gradient."""
    fraction = jnp.mean(assigned.astype(jnp.float32), axis=1)
    mean_prob = jnp.mean(probs, axis=1)
    return BALANCE_COEF * probs.shape[-1] * jnp.mean(jnp.sum(fraction * mean_prob, axis=-1))


class Experts(nn.Module):
    """E SwiGLU FFNs on dispatched tokens [E, G, C, d]; kernels [E, d, 2, d_ff] and [E, d_ff, d]."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        up_gate = self.param(
            "up_gate",
            nn.with_logical_partitioning(scaled_init(1, (2, 3), 0), ("expert", "embed", None, "mlp")),
            (cfg.num_experts, cfg.d_model, 2, cfg.d_ff),
            jnp.float32,
        )
        down = self.param(
            "down",
            nn.with_logical_partitioning(scaled_init(1, 2, 0), ("expert", "mlp", "embed")),
            (cfg.num_experts, cfg.d_ff, cfg.d_model),
            jnp.float32,
        )
        h = jnp.einsum("egcd,edkf->egckf", x, up_gate.astype(dtype))
        hidden = nn.with_logical_constraint(h[..., 0, :] * nn.silu(h[..., 1, :]), ("expert", "batch", None, "mlp"))
        return jnp.einsum("egcf,efd->egcd", hidden, down.astype(dtype))


class SwitchFFN(nn.Module):
    """x [batch, length, d] -> gate * Expert_i(x) for the top-1 expert i, 0 for dropped tokens.

    Sows the load-balancing loss (and the router z-loss when `router_z_loss` > 0, ST-MoE eq. 5) into
    'aux_loss', and the dropped fraction, router entropy and per-expert load into 'metrics'.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg = self.config
        batch, length, d = x.shape
        size = group_size(cfg, batch * length)
        groups = nn.with_logical_constraint(x.reshape(-1, size, d), ("batch", None, "embed"))
        logits = self.router(groups, train)
        slots = capacity(size, cfg.num_experts, cfg.capacity_factor if train else cfg.eval_capacity_factor)
        dispatch, gate, probs, assigned = route(logits, slots)
        self.report(logits, probs, assigned, dispatch)
        dispatch = dispatch.astype(x.dtype)
        expert_in = nn.with_logical_constraint(
            jnp.einsum("gsec,gsd->egcd", dispatch, groups), ("expert", "batch", None, "embed")
        )
        expert_out = Experts(cfg, name="experts")(expert_in)
        expert_out = nn.with_logical_constraint(expert_out, ("expert", "batch", None, "embed"))
        combined = jnp.einsum("gsec,egcd->gsd", dispatch, expert_out) * gate[..., None].astype(x.dtype)
        out = nn.with_logical_constraint(combined, ("batch", None, "embed"))
        return out.reshape(batch, length, d)

    def router(self, groups: jax.Array, train: bool) -> jax.Array:
        """Router logits [G, S, E] in float32 ("selective precision"), input jittered in training."""
        cfg = self.config
        kernel = self.param(
            "router",
            nn.with_logical_partitioning(scaled_init(0, 1), ("embed", None)),
            (cfg.d_model, cfg.num_experts),
            jnp.float32,
        )
        inputs = groups.astype(jnp.float32)
        if train:
            noise = jax.random.uniform(self.make_rng("dropout"), inputs.shape, jnp.float32, 1 - JITTER, 1 + JITTER)
            inputs = inputs * noise
        return inputs @ kernel

    def report(self, logits, probs, assigned, dispatch) -> None:
        """Sows the auxiliary losses and routing metrics of one layer."""
        self.sow("aux_loss", "balance_loss", balance_loss(probs, assigned))
        if self.config.router_z_loss > 0:
            z = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
            self.sow("aux_loss", "router_z_loss", self.config.router_z_loss * z)
        self.sow("metrics", "dropped_frac", 1.0 - jnp.mean(jnp.sum(dispatch, axis=(2, 3)).astype(jnp.float32)))
        entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-9)), axis=-1)
        self.sow("metrics", "router_entropy", jnp.mean(entropy))
        load = jnp.mean(assigned.astype(jnp.float32), axis=(0, 1))
        for i in range(self.config.num_experts):
            self.sow("metrics", f"expert_load/{i}", load[i])
