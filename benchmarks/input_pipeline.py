"""Tokens per second per host of the packed input pipeline alone: python -m benchmarks.input_pipeline.

For each tokenizer, prepares the data (trains spm:N and tokenises the splits into --cache_dir unless
they are there already; the time is reported as prepare_s), then times --steps BatchLoader calls on a
one-device batch sharding, so this host reads every row: shuffled random access to memory-mapped
windows, the int32 copy, and the device transfer. The loader runs in the training process (no grain
worker processes or prefetch). Prints one JSON line per tokenizer, with the 1-minute load average at
the start and end of the timing: numbers taken under load measure the load too.

`--fed_step` also times the train step of the README bench model (d_model 256, 4 layers, seq_len 256,
batch 8) fed by this loader (reading and transferring a new batch inside each timed step) against the
same compiled step on one synthetic device batch, alternating, and reports the ratio: above 1 the
device would wait on data.
"""
import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from scaling import data, sharding
from scaling.benchmark import fit_for_timing, random_batch
from scaling.models.registry import model_config


def one_device_sharding() -> NamedSharding:
    """Batch rows on one device: this host reads the whole global batch."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    return NamedSharding(mesh, PartitionSpec("data", None))


def measure(args, tokenizer: str) -> dict:
    """prepare_s, then tokens/s over `args.steps` loader calls after one untimed call."""
    options = {"tokenizer": tokenizer, "cache_dir": args.cache_dir}
    start = time.perf_counter()
    source = data.make_source(args.data, "train", args.seq_len, **options)
    prepare_s = time.perf_counter() - start
    load = data.BatchLoader(source, global_batch_size=args.batch_size, seed=0, sharding=one_device_sharding())
    jax.block_until_ready(load(0))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        jax.block_until_ready(load(step))
    elapsed = time.perf_counter() - start
    tokens_per_s = args.steps * args.batch_size * args.seq_len / elapsed
    bytes_per_token = data.bytes_per_token(args.data, "train", **options)
    return {
        "data": args.data, "tokenizer": tokenizer, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "steps": args.steps, "records": len(source), "prepare_s": prepare_s, "tokens_per_s_per_host": tokens_per_s,
        "bytes_per_token": bytes_per_token, "text_bytes_per_s_per_host": tokens_per_s * bytes_per_token,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def fed_step(args, tokenizer: str) -> dict:
    """Median train-step time fed by the loader and by a synthetic device batch, alternating per round."""
    options = {"tokenizer": tokenizer, "cache_dir": args.cache_dir}
    cfg = model_config("gpt", vocab_size=data.vocab_size(args.data, **options), d_model=256, n_layers=4, n_heads=4,
                       d_ff=704, seq_len=256)
    run = fit_for_timing(cfg, 8).run
    load = data.BatchLoader(data.make_source(args.data, "train", cfg.seq_len, **options), global_batch_size=8, seed=0,
                            sharding=sharding.batch_sharding(run.mesh))
    step, state, synthetic = run.compiled_train_step, run.init_state(), random_batch(cfg, 8, run.mesh)
    times = {"loader": [], "synthetic": []}
    with sharding.activate(run.mesh):
        for i in range(args.fed_rounds + 1):
            for feed, spent in times.items():
                start = time.perf_counter()
                state, metrics = step(state, load(i) if feed == "loader" else synthetic, None)
                jax.block_until_ready(metrics)
                if i:  # the first round warms up
                    spent.append(time.perf_counter() - start)
    loader_s, synthetic_s = (statistics.median(times[feed]) for feed in ("loader", "synthetic"))
    return {"fed_step": "gpt d256 L4 seq256 batch8", "tokenizer": tokenizer, "loader_step_s": loader_s,
            "synthetic_step_s": synthetic_s, "ratio": loader_s / synthetic_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pystdlib")
    parser.add_argument("--tokenizers", default="bytes,spm:4096")
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--cache_dir", default="runs/input_pipeline_cache",
                        help="keeps trained tokenizers and tokenised splits between invocations")
    parser.add_argument("--fed_step", action="store_true",
                        help="also time a train step fed by the loader against one on synthetic data")
    parser.add_argument("--fed_rounds", type=int, default=6, help="timed steps of each feed with --fed_step")
    args = parser.parse_args()
    for tokenizer in args.tokenizers.split(","):
        print(json.dumps(measure(args, tokenizer)), flush=True)
        if args.fed_step:
            print(json.dumps(fed_step(args, tokenizer)), flush=True)


if __name__ == "__main__":
    main()
