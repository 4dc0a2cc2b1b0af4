"""Step-time overhead of Switch over GPT at the same active shape: python -m benchmarks.moe_overhead.

For each number of experts (and group size), times the real train step of `switch` and of `gpt` of the
same d_model / n_layers / d_ff in one process (gpt first and last, to show drift) and prints the
ratio. The MoE work per token that grows with E (router 2dE) is small; dispatch and combine cost
~capacity_factor x group_size x d per token whatever E, so the ratio should not grow with E.
"""
import argparse
import dataclasses
import json

from scaling.benchmark import time_train_step
from scaling.config import MeshConfig, ModelConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", default="8,32")
    parser.add_argument("--group_sizes", default="256,1024")
    parser.add_argument("--capacity_factor", type=float, default=1.25)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--n_layers", type=int, default=4)
    parser.add_argument("--n_heads", type=int, default=4)
    parser.add_argument("--d_ff", type=int, default=704)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    base = ModelConfig(vocab_size=256, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                       d_ff=args.d_ff, seq_len=args.seq_len, capacity_factor=args.capacity_factor)
    mesh = MeshConfig(data=1)
    timed = lambda cfg: time_train_step(cfg, args.batch_size, mesh, steps=args.steps)["step_s"]
    gpt = [timed(base)]
    rows = []
    for experts in map(int, args.experts.split(",")):
        for group in map(int, args.group_sizes.split(",")):
            cfg = dataclasses.replace(base, arch="switch", num_experts=experts, group_size=group)
            rows.append({"num_experts": experts, "group_size": group, "switch_step_s": timed(cfg)})
    gpt.append(timed(base))
    gpt_s = sum(gpt) / len(gpt)
    for row in rows:
        ratio = row["switch_step_s"] / gpt_s
        print(json.dumps({**row, "gpt_step_s": gpt_s, "gpt_drift": gpt[1] / gpt[0], "ratio": ratio}))


if __name__ == "__main__":
    main()
