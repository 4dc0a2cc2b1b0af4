"""Sampling speed of trained runs side by side: python -m benchmarks.sampling_speed --runs DIR_A,DIR_B.

Restores each run's latest checkpoint (as experiments.sample does), compiles its generation (one
program: scaling.sample), then alternates: each round decodes --num_tokens tokens after the same
prompt (greedily, or sampled at --temperature with a fixed seed) with every model in turn. Prints
per run the median tokens/s over the rounds and the ratio to the first run, and, for models that
route tokens past blocks, the fraction of (token, routed block) pairs the threshold routing took
while generating (metric mod_routed_frac of the generated text) and on the run's first held-out
batch (the text it was trained for; top-k takes mod_capacity).
"""
import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.sample import load_params
from scaling import sharding
from scaling.config import MeshConfig, TrainConfig
from scaling.models.registry import get_architecture
from scaling.sample import sample
from scaling.train.evaluation import EVAL_SEED
from scaling.train.run import Run
from scaling.train.run_dir import read_config


def routed_fraction(cfg, params, tokens) -> float | None:
    """Mean fraction of tokens routed blocks took over `tokens` (threshold routing), or None."""
    model = get_architecture(cfg.arch).model(cfg.replace(seq_len=tokens.shape[1]))
    _, sown = model.apply({"params": params}, tokens, autoregressive=True, mutable="metrics")
    values = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(sown)[0] if "routed_frac" in str(path)]
    return float(np.mean([np.mean(v) for v in values])) if values else None


def held_out_tokens(run_dir: str, cfg) -> jax.Array:
    """The inputs of the first held-out batch the run evaluates on."""
    config = read_config(run_dir)
    run = Run(cfg, TrainConfig(**config["train"]), sharding.make_mesh(MeshConfig(data=1), jax.devices()[:1]),
              cache_dir=config.get("data_cache"))
    return run.loader("eval", seed=EVAL_SEED)(0)["inputs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="Comma-separated run directories.")
    parser.add_argument("--prompt", default="def ")
    parser.add_argument("--num_tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy.")
    args = parser.parse_args()
    models = [load_params(run)[:2] for run in args.runs.split(",")]
    prompt = np.tile(np.frombuffer(args.prompt.encode(), np.uint8).astype(np.int32), (args.batch, 1))
    times = [[] for _ in models]
    outputs = [None] * len(models)
    for round_index in range(args.rounds + 1):  # round 0 compiles
        for i, (cfg, params) in enumerate(models):
            start = time.perf_counter()
            generated = sample(cfg, params, prompt, args.num_tokens, temperature=args.temperature)
            outputs[i] = jax.block_until_ready(generated)
            if round_index:
                times[i].append(time.perf_counter() - start)
    first = statistics.median(times[0])
    for run, (cfg, params), timed, generated in zip(args.runs.split(","), models, times, outputs):
        seconds = statistics.median(timed)
        text = jnp.concatenate([jnp.asarray(prompt), generated], axis=1)
        routed = routed_fraction(cfg, params, text)  # None: the model routes nothing, nor will it on held-out text
        held_out = None if routed is None else routed_fraction(cfg, params, held_out_tokens(run, cfg))
        print(json.dumps({
            "run": run, "arch": cfg.arch, "d_model": cfg.d_model, "n_layers": cfg.n_layers, "batch": args.batch,
            "temperature": args.temperature, "num_tokens": args.num_tokens,
            "tokens_per_s": args.batch * args.num_tokens / seconds,
            "time_ratio": seconds / first, "routed_frac": routed, "routed_frac_held_out": held_out,
            "device": jax.devices()[0].device_kind,
        }))


if __name__ == "__main__":
    main()
