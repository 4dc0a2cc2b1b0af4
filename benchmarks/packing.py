"""Tokens per second of packing a training split, in this process against worker processes:
python -m benchmarks.packing --data tfds:NAME --data_dir DIR --tokenizer spm:N --workers 0,8

Trains (or loads from --cache_dir) the tokenizer, then packs the split once per --workers setting per
round, alternating them, into memory only (nothing cached, so every round packs again). 0 packs in this
process (grain's threads), N > 0 in N spawned processes (scaling/data/parallel.py), the start included.
Prints one JSON line per packing, with whether its stream equals the first setting's of the round.
"""
import argparse
import json
import time

import numpy as np

from scaling.data import packing, parallel, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pystdlib")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--text_key", default="text")
    parser.add_argument("--tokenizer", default="spm:8192")
    parser.add_argument("--data_tokens", type=float, default=0, help="pack to at most this many tokens (0: all)")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts; 0 packs in this process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache_dir", default="runs/packing_cache", help="keeps the trained tokenizer")
    args = parser.parse_args()
    spec = sources.Spec(args.data, args.tokenizer, args.data_dir, args.text_key, args.cache_dir)
    documents, tokenizer = spec.documents("train"), spec.make_tokenizer()
    for round_ in range(args.rounds):
        first = None
        for workers in map(int, args.workers.split(",")):
            start = time.perf_counter()
            packed = packing.pack(documents, tokenizer, int(args.data_tokens), workers)
            seconds = time.perf_counter() - start
            first = packed if first is None else first
            print(json.dumps({
                "data": args.data, "tokenizer": args.tokenizer, "round": round_, "workers": workers,
                "documents": packed.documents, "tokens": len(packed.tokens), "seconds": round(seconds, 2),
                "tokens_per_s": round(len(packed.tokens) / seconds), "cores": parallel.cores(),
                "same_stream": bool(np.array_equal(packed.tokens, first.tokens)),
            }), flush=True)


if __name__ == "__main__":
    main()
