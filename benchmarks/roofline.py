"""Where a GPU's train step spends its time, estimated without the GPU:

    python -m benchmarks.roofline --target h100 [--size 760M --seq_len 2048 --layers looped]

Fits `gpt` at one of the accelerator suite's sizes (benchmarks/accelerator_suite.py, 64k tokens per
batch) to one device's usable memory as the sweep would, compiles its train step with XLA:GPU for a
compile-only device (scaling/hardware.py; needs jax's CUDA plugin) and prints its roofline estimate
(scaling/roofline.py): the total, the MFU it bounds, and the groups of instructions that take the most.
"""
import argparse
import sys

from benchmarks.accelerator_suite import FULL, shape
from scaling import hardware, roofline
from scaling.benchmark import fit_for_timing
from scaling.config import MeshConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="h100", choices=[n for n, a in hardware.ACCELERATORS.items() if a.gpu])
    parser.add_argument("--size", default="760M", choices=list(FULL.sizes))
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--layers", choices=("looped", "unrolled"), help="The scan over the layers (default: a "
                                                                       "GPU's, unrolled).")
    parser.add_argument("--matmul_efficiency", type=float, default=0.7, help="Matmul rate as a share of the peak.")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    accelerator = hardware.ACCELERATORS[args.target]
    devices = hardware.compile_only_devices(accelerator, 1)
    if devices is None:
        print("error: --target needs jax's CUDA plugin: pip install 'jax-cuda12-plugin[with-cuda]' (the jax version) "
              "and, on a host without a GPU, export JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1", file=sys.stderr)
        sys.exit(2)
    unroll = None if args.layers is None else args.layers == "unrolled"
    model_cfg = shape(FULL.sizes[args.size], args.seq_len, FULL.vocab_size, unroll_layers=unroll)
    memory = int(hardware.usable_memory_gib(accelerator) * 2**30)
    fit = fit_for_timing(model_cfg, FULL.tokens_per_batch // args.seq_len, MeshConfig(), memory, devices=devices)
    run = fit.run
    matmul_rate = args.matmul_efficiency * accelerator.peak_tflops * 1e12
    found = roofline.estimate(run.compiled_train_step.as_text(), matmul_rate, accelerator.gpu.memory_bandwidth)
    model_flops = run.arch.counts(run.model_cfg).flops_per_token * FULL.tokens_per_batch
    print(f"gpt {args.size}, context {args.seq_len}, {'unrolled' if run.model_cfg.unroll_layers else 'looped'} layers, "
          f"remat {run.model_cfg.remat}, {run.train_cfg.microbatches} microbatch(es), {fit.gib_per_device:.1f} GiB "
          f"on one compile-only {accelerator.gpu.description}")
    bound = model_flops / found.total_s / (accelerator.peak_tflops * 1e12)
    print(f"roofline {1e3 * found.total_s:.1f} ms per step: MFU at most {bound:.1%} (matmuls at "
          f"{args.matmul_efficiency:.0%} of {accelerator.peak_tflops:g} TFLOP/s, memory at "
          f"{accelerator.gpu.memory_bandwidth / 1e12:g} TB/s); {found.flops / model_flops:.2f}x the analytic FLOPs "
          f"(causal attention counts half its T x T), {found.bytes / 1e9:.0f} GB moved")
    for group, seconds in found.seconds.most_common(args.top):
        print(f"{1e3 * seconds:9.2f} ms {seconds / found.total_s:6.1%}  {group}")


if __name__ == "__main__":
    main()
