"""Step-time overhead of Switch over GPT at the same active shape: python -m benchmarks.moe_overhead.

For each batch size, times the real train step of `gpt` and of `switch` with each number of experts
(same d_model / n_layers / d_ff, so the same active parameters) side by side in one process, and prints
each Switch step time over the GPT one. The routing work per token does not depend on E (router 2dE is
small; dispatch and combine cost ~capacity_factor x group_size x d per token whatever E); the work per
step on all parameters (weight-gradient writes, clipping, AdamW) grows with E. A second table times
the two per-step costs that grow with E, each alone: one Switch layer's up/gate weight-gradient
matmul (the same FLOPs, tokens x d x 2 d_ff, spread over E experts: what grows is writing E x d x
2 d_ff gradient entries from fewer rows each) and the optimizer update (clipping + AdamW) of the
whole model's parameters.
"""
import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from scaling.benchmark import median_seconds, time_train_steps
from scaling.config import MeshConfig, ModelConfig, TrainConfig
from scaling.models.registry import get_architecture, model_config


def median_ms(fn, *args) -> float:
    """Median wall time of the jitted `fn(*args)` in ms, 9 timed calls after one untimed."""
    return 1000 * median_seconds(fn, *args, repeats=9, warmup=1)


def weight_gradient_ms(num_experts: int, tokens: int, d_model: int, d_ff: int) -> float:
    """One Switch layer's up/gate weight gradient: E matmuls [d, n] x [n, 2 d_ff], n = tokens / E."""
    n = tokens // num_experts
    inputs = jax.random.normal(jax.random.key(0), (num_experts, n, d_model))
    grads = jax.random.normal(jax.random.key(1), (num_experts, n, 2 * d_ff))
    return median_ms(jax.jit(lambda x, g: jnp.einsum("end,enf->edf", x, g)), inputs, grads)


def optimizer_ms(cfg: ModelConfig) -> float:
    """The architecture's optimizer update (clipping + AdamW) of all of `cfg`'s parameters."""
    arch = get_architecture(cfg.arch)
    tx, _ = arch.optimizer(TrainConfig(), 1000)
    shapes = jax.eval_shape(arch.model(cfg).init, jax.random.key(0), jnp.zeros((1, cfg.seq_len), jnp.int32))
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), nn.unbox(shapes["params"]))
    update = jax.jit(lambda g, state, p: optax.apply_updates(p, tx.update(g, state, p)[0]))
    return median_ms(update, params, tx.init(params), params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default="8,32")
    parser.add_argument("--batch_sizes", default="8,32")
    parser.add_argument("--group_size", type=int, default=256)
    parser.add_argument("--capacity_factor", type=float, default=1.25)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--n_heads", type=int, default=4)
    parser.add_argument("--d_ff", type=int, default=704)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args()
    shape = dict(vocab_size=256, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                 d_ff=args.d_ff, seq_len=args.seq_len)
    gpt = model_config("gpt", **shape)
    switches = [model_config("switch", **shape, num_experts=int(e), group_size=args.group_size,
                             capacity_factor=args.capacity_factor) for e in args.experts.split(",")]
    for batch_size in map(int, args.batch_sizes.split(",")):
        gpt_time, *switch_times = time_train_steps([gpt, *switches], batch_size, MeshConfig(data=1), steps=args.steps)
        for cfg, timed in zip(switches, switch_times):
            counts = get_architecture("switch").counts(cfg)
            print(json.dumps({
                "num_experts": cfg.options.num_experts, "batch_size": batch_size, "tokens_per_batch": batch_size * cfg.seq_len,
                "params": counts.params, "active_params": counts.active_params, "gpt_step_s": gpt_time["step_s"],
                "switch_step_s": timed["step_s"], "ratio": timed["step_s"] / gpt_time["step_s"],
            }), flush=True)
        slots = int(batch_size * args.seq_len * args.capacity_factor)
        for cfg in switches:
            ms = weight_gradient_ms(cfg.options.num_experts, slots, args.d_model, args.d_ff)
            print(json.dumps({"num_experts": cfg.options.num_experts, "expert_slots": slots, "weight_gradient_ms": ms}))
    for cfg in [gpt, *switches]:
        print(json.dumps({"arch": cfg.arch, "num_experts": getattr(cfg.options, "num_experts", None),
                          "optimizer_ms": optimizer_ms(cfg)}))


if __name__ == "__main__":
    main()
