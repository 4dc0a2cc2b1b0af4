"""Switch Transformer feed-forward layer: top-1 routing over E SwiGLU experts (Fedus et al. 2021).

Tokens are split into groups [G, S, d] (Mesh-TensorFlow style). Per group, each token goes to the
argmax expert of a float32 router (eq. 1-2) and takes a slot in that expert's buffer of `capacity`
slots by an exclusive cumsum; tokens past capacity are dropped (MoE output 0, so they pass through
the residual). Dispatch and combine are einsums with a one-hot [G, S, E, C] mask. The expert axis of
the expert weights and of the dispatched activations is the logical axis 'expert' while groups are
'batch': on a mesh with an 'expert' axis the compiler turns the change of layout into all-to-alls.
Decoding has no capacity: every token goes through its expert, so that a sequence samples alike
whatever the others in its batch route to.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling import sharding
from scaling.config import ArchOptions, ModelConfig, UsageError, check_positive, option
from scaling.nn.attention import decoding

BALANCE_COEF = 1e-2  # alpha of eq. 4
JITTER = 1e-2  # router input multiplied by U(1 - JITTER, 1 + JITTER) in training
MIN_CAPACITY = 4


@dataclasses.dataclass(frozen=True)
class MoEOptions(ArchOptions):
    """Options of the Switch layer; an architecture with Switch FFNs has options deriving from these."""

    num_experts: int = option(8, "Experts per MoE layer.")
    capacity_factor: float = option(1.25, "Expert capacity factor in training.")
    eval_capacity_factor: float = option(2.0, "Expert capacity factor in evaluation (decoding has none).")
    group_size: int = option(256, "Tokens per routing group.")
    router_z_loss: float = option(0.0, "Router z-loss coefficient (ST-MoE: 1e-3).")

    def validate(self, cfg: ModelConfig) -> None:
        super().validate(cfg)
        if self.num_experts < 1:
            raise UsageError("--num_experts", "must be a positive integer")
        check_positive(self, "capacity_factor", "eval_capacity_factor")
        if self.group_size < 1:
            raise UsageError("--group_size", "must be a positive integer")
        if self.router_z_loss < 0:
            raise UsageError("--router_z_loss", "must be >= 0 (ST-MoE uses 1e-3)")


def check_mesh(mesh, cfg: ModelConfig, batch_size: int) -> None:
    """UsageError unless experts divide over 'expert' and routing groups tile the batch and its shards."""
    opts = cfg.options
    if opts.num_experts % mesh.shape["expert"]:
        raise UsageError("--num_experts", f"{opts.num_experts} is not divisible by the expert mesh axis "
                                          f"{mesh.shape['expert']}")
    tokens = batch_size * cfg.seq_len
    size = min(opts.group_size, tokens)
    ways = sharding.batch_ways(mesh)
    if tokens % size or (tokens // size) % ways:
        raise UsageError(
            "--group_size",
            f"{opts.group_size} must divide the {tokens} tokens per batch into a multiple of data x fsdp x expert = "
            f"{ways} groups; e.g. --group_size={tokens // ways}",
        )


def capacity(group_tokens: int, num_experts: int, factor: float) -> int:
    """Slots per expert and group: ceil(S / E * capacity_factor), at least MIN_CAPACITY."""
    return max(MIN_CAPACITY, math.ceil(group_tokens / num_experts * factor))


def group_size(cfg: ModelConfig, num_tokens: int) -> int:
    """Tokens per routing group: the largest divisor of `num_tokens` that is at most the group_size option.

    Training batches divide exactly (`check_mesh` refuses others), so this is the option's group_size
    there; smaller groups only occur when evaluating or decoding an arbitrary number of tokens.
    """
    return max(s for s in range(1, min(cfg.options.group_size, num_tokens) + 1) if num_tokens % s == 0)


def scaled_init(in_axis: int, out_axis, batch_axis=()) -> nn.initializers.Initializer:
    """Truncated normal with std sqrt(0.1 / fan_in), the "10x smaller" init of Switch sec. 2.3."""
    return nn.initializers.variance_scaling(
        0.1, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
    )


def route(logits: jax.Array, slots: int, present: jax.Array | None = None):
    """Top-1 routing of logits [G, S, E] (float32) into `slots` per expert.

    `present` [G, S] (optional) marks the tokens routed at all; absent ones take no slot.
    Returns (dispatch [G, S, E, C] one-hot of (expert, position) for kept tokens, gate [G, S] = p of the
    chosen expert, probs [G, S, E], assigned [G, S, E] one-hot argmax before dropping).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    expert = jnp.argmax(probs, axis=-1)
    assigned = jax.nn.one_hot(expert, logits.shape[-1], dtype=jnp.int32)
    if present is not None:
        assigned = assigned * present[..., None].astype(jnp.int32)
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
    """E SwiGLU FFNs, kernels [E, d, 2, d_ff] and [E, d_ff, d]: on dispatched tokens [E, G, C, d], or
    (`chosen`, `grouped`) on tokens [T, d] each through its own expert."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        experts = cfg.options.num_experts
        self.up_gate = self.param(
            "up_gate",
            nn.with_logical_partitioning(scaled_init(1, (2, 3), 0), ("expert", "embed", None, "mlp")),
            (experts, cfg.d_model, 2, cfg.d_ff),
            jnp.float32,
        )
        self.down = self.param(
            "down",
            nn.with_logical_partitioning(scaled_init(1, 2, 0), ("expert", "mlp", "embed")),
            (experts, cfg.d_ff, cfg.d_model),
            jnp.float32,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Dispatched tokens [E, G, C, d] -> [E, G, C, d]: each expert's slots of every group as one
        matrix, through the up and gate halves of its kernel apart. Side by side on a 2-core AMD EPYC
        (Zen 4), the switch step took 3.5-7.6% less time than with the kernel's [d, 2, d_ff] contracted
        whole per group (benchmarks/README.md, Switch)."""
        dtype = jnp.dtype(self.config.dtype)
        experts, groups, slots, d = x.shape
        tokens = x.reshape(experts, groups * slots, d)
        up, gate = (jnp.einsum("etd,edf->etf", tokens, self.up_gate[:, :, half].astype(dtype)) for half in (0, 1))
        hidden = nn.with_logical_constraint(up * nn.silu(gate), ("expert", "batch", "mlp"))
        return jnp.einsum("etf,efd->etd", hidden, self.down.astype(dtype)).reshape(experts, groups, slots, d)

    def chosen(self, x: jax.Array, expert: jax.Array) -> jax.Array:
        """Token t of x [T, d] through expert[t]: each token's weights gathered, read once per token."""
        dtype = jnp.dtype(self.config.dtype)
        up, gate = jnp.unstack(jnp.einsum("td,tdkf->tkf", x, self.up_gate[expert].astype(dtype)), axis=1)
        return jnp.einsum("tf,tfd->td", up * nn.silu(gate), self.down[expert].astype(dtype))

    def grouped(self, x: jax.Array, expert: jax.Array) -> jax.Array:
        """Token t of x [T, d] through expert[t] (0 where expert[t] >= E): the tokens sorted by expert,
        each expert's run of them through its weights in one grouped matmul (`jax.lax.ragged_dot`) per
        projection; up and gate in one (decoding runs on one device, so d_ff is whole), which XLA:CPU
        expands to dense products once instead of twice (16 sequences sampled on a 2-core Zen 4: 1.09-1.78x
        the tokens/s, three runs alternating)."""
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        experts = cfg.options.num_experts
        order = jnp.argsort(expert, stable=True)
        sizes = jnp.sum(jax.nn.one_hot(expert, experts, dtype=jnp.int32), axis=0)  # none for expert >= E
        up_gate = self.up_gate.reshape(experts, cfg.d_model, 2 * cfg.d_ff).astype(dtype)
        up, gate = jnp.split(jax.lax.ragged_dot(x[order], up_gate, sizes), 2, axis=-1)
        out = jax.lax.ragged_dot(up * nn.silu(gate), self.down.astype(dtype), sizes)
        return out[jnp.argsort(order)]


class SwitchFFN(nn.Module):
    """x [batch, length, d] -> gate * Expert_i(x) for the top-1 expert i, 0 for dropped tokens and
    for those `mask` [batch, length] (optional) leaves out, which take no expert slot.

    With `noop_experts` N > 0 (integrated MoDE, Raposo et al. 2024 sec. 3.6) the router chooses among
    the E experts and N no-op experts: a token routed to a no-op expert skips the FFN (output 0, so it
    passes through the residual), and each real expert has the capacity of a 1/(E + N) share.
    Sows the load-balancing loss (over all E + N choices; and the router z-loss when `router_z_loss`
    > 0, ST-MoE eq. 5) into 'aux_loss', and the dropped fraction, router entropy, per-expert load
    and, with no-op experts, the no-op fraction into 'metrics'.
    """

    config: ModelConfig
    noop_experts: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, mask: jax.Array | None = None) -> jax.Array:
        cfg, opts = self.config, self.config.options
        batch, length, d = x.shape
        experts = Experts(cfg, name="experts")
        if decoding(self):
            return self.dropless(x, experts, mask)
        size = group_size(cfg, batch * length)
        groups = nn.with_logical_constraint(x.reshape(-1, size, d), ("batch", None, "embed"))
        logits = self.router(groups, train)
        choices = opts.num_experts + self.noop_experts
        slots = capacity(size, choices, opts.capacity_factor if train else opts.eval_capacity_factor)
        present = None if mask is None else mask.reshape(-1, size)
        dispatch, gate, probs, assigned = route(logits, slots, present)
        dispatch = dispatch[:, :, : opts.num_experts]
        self.report(logits, probs, assigned, dispatch)
        dispatch = dispatch.astype(x.dtype)
        expert_in = nn.with_logical_constraint(
            jnp.einsum("gsec,gsd->egcd", dispatch, groups), ("expert", "batch", None, "embed")
        )
        expert_out = nn.with_logical_constraint(experts(expert_in), ("expert", "batch", None, "embed"))
        combined = jnp.einsum("gsec,egcd->gsd", dispatch, expert_out) * gate[..., None].astype(x.dtype)
        out = nn.with_logical_constraint(combined, ("batch", None, "embed"))
        return out.reshape(batch, length, d)

    def dropless(self, x: jax.Array, experts: Experts, mask: jax.Array | None) -> jax.Array:
        """Decoding: every token through its top-1 expert, none dropped (dispatch at a capacity that
        keeps every token computes the same). At most E tokens (a step of at most E sequences) take
        their experts' gathered weights, which reads at most the weights dispatch reads and computes no
        idle capacity slots; more (a prompt, or more sequences) go through a grouped matmul."""
        batch, length, d = x.shape
        tokens = x.reshape(-1, d)
        probs = jax.nn.softmax(self.router(tokens[None], train=False)[0], axis=-1)
        expert = jnp.argmax(probs, axis=-1)
        real = expert < self.config.options.num_experts  # not a no-op expert (integrated MoDE)
        weight = jnp.max(probs, axis=-1) * real * (1 if mask is None else mask.reshape(-1))
        if tokens.shape[0] <= self.config.options.num_experts:
            out = experts.chosen(tokens, jnp.where(real, expert, 0))
        else:
            out = experts.grouped(tokens, expert)
        return (out * weight[:, None].astype(x.dtype)).reshape(batch, length, d)

    def router(self, groups: jax.Array, train: bool) -> jax.Array:
        """Router logits [G, S, E + N] in float32 ("selective precision"), input jittered in training."""
        cfg = self.config
        kernel = self.param(
            "router",
            nn.with_logical_partitioning(scaled_init(0, 1), ("embed", None)),
            (cfg.d_model, cfg.options.num_experts + self.noop_experts),
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
        z_loss = self.config.options.router_z_loss
        if z_loss > 0:
            z = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
            self.sow("aux_loss", "router_z_loss", z_loss * z)
        experts = self.config.options.num_experts
        load = jnp.mean(assigned.astype(jnp.float32), axis=(0, 1))
        kept = jnp.mean(jnp.sum(dispatch, axis=(2, 3)).astype(jnp.float32))
        self.sow("metrics", "dropped_frac", jnp.sum(load[:experts]) - kept)
        entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-9)), axis=-1)
        self.sow("metrics", "router_entropy", jnp.mean(entropy))
        for i in range(experts):
            self.sow("metrics", f"expert_load/{i}", load[i])
        if self.noop_experts:
            self.sow("metrics", "noop_frac", jnp.sum(load[experts:]))
