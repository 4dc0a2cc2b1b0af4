"""The accelerator suite: python -m benchmarks.accelerator_suite [--out DIR] [--sections mfu,kernel,context,archs].

One command that measures, on the current device, what only an accelerator shows, and writes
<out>/suite.jsonl (one JSON object per measurement) and <out>/suite.md (the tables), both after every
measurement, so that a run stopped at a time limit keeps whole tables of what it measured; a
section that fails is recorded as failed, with its error, and the next one runs. The sections run in
the order given, by default the one below (those that decide a default first):

- mfu: `gpt` in bfloat16 at ~125M, ~350M and ~760M parameters, context 1024 and 2048, at 64k tokens
  per batch, with remat and microbatches fitted to the device memory as the isoFLOP sweep fits them
  and the platform's loop over the layers (unrolled on a GPU); the two largest also with the other,
  which tells whether that default is right;
- kernel: Lightning Attention's chunked form in XLA ops and its Pallas kernels (scaling/nn/linear_attention.py,
  lightning_kernel.py) against cuDNN flash attention where available, forward and forward+backward,
  at 4k..64k tokens, batch 4, 32 heads of 128, bfloat16 (the Lightning Attention-2 paper's setting);
- context: `tnl` and `gpt` training tokens/s and compiled memory per device from 1k to 64k tokens
  per sequence at the same tokens per batch (fitted to the device memory);
- archs: the step time of every registered architecture over `gpt`'s at a ~350M shape, side by side
  (alternating steps), remat and microbatches fitted as the sweep fits them, the layers looped for all
  (one layer's program to compile each: six unrolled 350M steps did not compile in four minutes on
  the H200's host; the loop costs `gpt` 12-15% at 350M-760M, mfu above).

Compiling takes most of a run's time (a GPU lease is short), so each section first fits and compiles
all its programs in threads (XLA compiles with Python's lock released; GPU autotuning runs then too),
and only then times them one after another with nothing compiling beside them. `compile_s` is a
program's wall time to fit and compile among the others.

--tiny runs every section at toy sizes (the CPU test of tests/test_benchmarks.py), so it cannot rot.
"""
import argparse
import concurrent.futures
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp

from scaling.benchmark import fit_for_timing, median_seconds, time_fits
from scaling.config import MeshConfig, ModelConfig
from scaling.models.registry import ARCHITECTURES, model_config
from scaling.models.tnl import layer_decays
from scaling.nn.attention import causal_attention
from scaling.nn.linear_attention import linear_attention
from scaling.nn.stack import unrolls
from scaling.shapes import d_ff_for
from scaling.train import fitting
from scaling.train.metrics import peak_tflops

COMPILE_THREADS = max(2, (os.cpu_count() or 1) // 4)


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of every section."""

    sizes: dict  # name -> (d_model, n_layers)
    seq_lens: tuple[int, ...]
    tokens_per_batch: int
    arch_size: str
    arch_seq_len: int
    arch_batch: int
    context_size: tuple[int, int]
    context_lens: tuple[int, ...]
    context_tokens: int
    kernel_shape: tuple[int, int, int]  # batch, heads, head dim
    kernel_lens: tuple[int, ...]
    both_loops: tuple[str, ...] = ()  # mfu sizes also measured with the layer loop the platform does not default to
    vocab_size: int = 32768
    steps: int = 5
    warmup: int = 2


FULL = Profile(
    sizes={"125M": (768, 12), "350M": (1024, 24), "760M": (1536, 24)},
    seq_lens=(1024, 2048), tokens_per_batch=65536,
    arch_size="350M", arch_seq_len=1024, arch_batch=16,
    context_size=(1024, 12), context_lens=(1024, 4096, 16384, 32768, 65536), context_tokens=65536,
    kernel_shape=(4, 32, 128), kernel_lens=(4096, 8192, 16384, 32768, 65536), both_loops=("350M", "760M"),
)
TINY = Profile(
    sizes={"tiny": (64, 2)},
    seq_lens=(64,), tokens_per_batch=256,
    arch_size="tiny", arch_seq_len=64, arch_batch=8,
    context_size=(64, 2), context_lens=(128,), context_tokens=256,
    kernel_shape=(1, 2, 16), kernel_lens=(128,), both_loops=("tiny",),
    vocab_size=256, steps=1, warmup=1,
)


def shape(size: tuple[int, int], seq_len: int, vocab_size: int, arch: str = "gpt", **options):
    """A bfloat16 model of the size family's proportions (head dim 64, d_ff 8/3 d)."""
    d_model, n_layers = size
    return model_config(arch, d_model=d_model, n_layers=n_layers, n_heads=d_model // 64, d_ff=d_ff_for(d_model),
                        seq_len=seq_len, vocab_size=vocab_size, dtype="bfloat16", **options)


def _in_threads(fn, items: list) -> list[concurrent.futures.Future]:
    """fn(item) for every item, COMPILE_THREADS at a time; all done on return."""
    with concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS) as pool:
        return [pool.submit(fn, item) for item in items]


def _fits(requests: list[tuple[ModelConfig, int]], memory) -> list:
    """Every (model, batch) fitted to `memory` with its train step compiled (see the module docstring)."""
    def fit_and_compile(request):
        start = time.perf_counter()
        fit = fit_for_timing(*request, MeshConfig(), memory)
        fit.run.compiled_train_step  # compiled here (kept on the run) rather than when timed
        fit.seconds = time.perf_counter() - start
        return fit

    return [future.result() for future in _in_threads(fit_and_compile, requests)]


def _row(section: str, fit, result: dict, **extra) -> dict:
    counts = fit.run.arch.counts(fit.run.model_cfg)
    cfg = fit.run.model_cfg
    return {"section": section, "arch": cfg.arch, "params": counts.params, "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "seq_len": cfg.seq_len, "batch_size": fit.run.train_cfg.batch_size,
            **{k: result[k] for k in ("step_s", "tokens_per_s", "tflops_per_device", "mfu", "remat", "microbatches",
                                      "gib_per_device", "compile_s")}, **extra}


def mfu(profile: Profile, memory):
    default = unrolls(ModelConfig())
    runs = [(name, unroll, shape(size, seq_len, profile.vocab_size, unroll_layers=unroll))
            for name, size in profile.sizes.items()
            for unroll in ((default, not default) if name in profile.both_loops else (default,))
            for seq_len in profile.seq_lens]
    fits = _fits([(model_cfg, profile.tokens_per_batch // model_cfg.seq_len) for _, _, model_cfg in runs], memory)
    for (name, unroll, _), fit in zip(runs, fits):
        result = time_fits([fit], steps=profile.steps, warmup=profile.warmup)[0]
        layers = ("unrolled" if unroll else "looped") + (" (default)" if unroll == default else "")
        yield _row("mfu", fit, result, size=name, layers=layers)


def archs(profile: Profile, memory):
    size, seq_len = profile.sizes[profile.arch_size], profile.arch_seq_len
    looped = [shape(size, seq_len, profile.vocab_size, arch, unroll_layers=False) for arch in ARCHITECTURES]
    fits = _fits([(model_cfg, profile.arch_batch) for model_cfg in looped], memory)
    results = time_fits(fits, steps=profile.steps, warmup=profile.warmup)
    base = results[0]["step_s"]
    for fit, result in zip(fits, results):
        layers = "unrolled" if fit.run.model_cfg.unroll_layers else "looped"
        yield _row("archs", fit, result, size=profile.arch_size, layers=layers, step_ratio=result["step_s"] / base)


def context(profile: Profile, memory):
    requests = [(shape(profile.context_size, seq_len, profile.vocab_size, arch),
                 max(1, profile.context_tokens // seq_len))
                for seq_len in profile.context_lens for arch in ("gpt", "tnl")]
    fits = _fits(requests, memory)
    for pair in zip(fits[::2], fits[1::2]):
        for fit, result in zip(pair, time_fits(list(pair), steps=profile.steps, warmup=profile.warmup)):
            yield _row("context", fit, result)


def _kernels(decay):
    def lightning(form):
        return lambda q, k, v: linear_attention(q, k, v, decay, form=form, chunk_size=64)

    def softmax(q, k, v):
        return causal_attention(q, k, v, 1 / q.shape[-1] ** 0.5)

    return {"lightning (chunked, XLA)": lightning("chunked"), "lightning (Pallas)": lightning("pallas"),
            "softmax (cuDNN flash on GPU)": softmax}


def kernel(profile: Profile, memory):
    del memory
    batch, heads, d_head = profile.kernel_shape
    decay = jnp.asarray(layer_decays(heads, 2)[0])
    programs = []  # (row, "forward" or "forward_backward", jitted function, q, k, v)
    for seq_len in profile.kernel_lens:
        keys = jax.random.split(jax.random.key(seq_len), 3)
        q, k, v = (jax.random.normal(key, (batch, seq_len, heads, d_head), jnp.bfloat16) for key in keys)
        for name, fn in _kernels(decay).items():
            row = {"section": "kernel", "kernel": name, "seq_len": seq_len, "batch": batch, "heads": heads,
                   "d_head": d_head}
            programs.append((row, "forward", jax.jit(fn), q, k, v))
            loss = jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v).astype(jnp.float32)), (0, 1, 2))
            programs.append((row, "forward_backward", jax.jit(loss), q, k, v))

    def compile_program(program):
        _, _, jitted, *inputs = program
        return jitted.lower(*inputs).compile()

    compiling = _in_threads(compile_program, programs)
    for (row, key, _, *inputs), future in zip(programs, compiling):
        try:
            compiled = future.result()
            row[f"{key}_temp_gib"] = compiled.memory_analysis().temp_size_in_bytes / 2**30
            row[f"{key}_ms"] = 1e3 * median_seconds(compiled, *inputs)
        except Exception as error:  # out of memory, or a kernel this jax cannot lower: recorded
            row[f"{key}_ms"] = f"failed: {type(error).__name__}: {str(error).split(':')[0][:80]}"
        if key == "forward_backward":
            yield row


SECTIONS = {"mfu": mfu, "kernel": kernel, "context": context, "archs": archs}  # run in this order by default


def _table(rows: list[dict], columns: tuple[str, ...]) -> list[str]:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows
    ]


COLUMNS = {
    "mfu": ("size", "layers", "params", "seq_len", "batch_size", "remat", "microbatches", "gib_per_device",
            "tokens_per_s", "tflops_per_device", "mfu"),
    "archs": ("arch", "layers", "params", "seq_len", "batch_size", "remat", "microbatches", "step_s", "step_ratio",
              "tokens_per_s", "gib_per_device"),
    "context": ("arch", "seq_len", "batch_size", "remat", "microbatches", "tokens_per_s", "gib_per_device"),
    "kernel": ("kernel", "seq_len", "forward_ms", "forward_backward_ms", "forward_temp_gib",
               "forward_backward_temp_gib"),
}


def markdown(rows: list[dict]) -> str:
    device = jax.devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    usable = f", {limit / 2**30:.1f} GiB usable per device (bytes_limit)" if limit else ""
    lines = [f"Device: {device.device_kind} ({device.platform}), jax {jax.__version__}, "
             f"peak {peak_tflops()} bf16 TFLOP/s for MFU{usable}"]
    for section, columns in COLUMNS.items():
        mine = [row for row in rows if row["section"] == section and "failed" not in row]
        failed = [f"failed: {row['failed']}" for row in rows if row["section"] == section and "failed" in row]
        if mine or failed:
            lines += ["", f"### {section}", ""] + (_table(mine, columns) if mine else []) + failed
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/accelerator_suite")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--tiny", action="store_true", help="Toy sizes (a CPU check that the suite runs).")
    parser.add_argument("--device_memory_gib", type=float, default=None)
    args = parser.parse_args()
    profile = TINY if args.tiny else FULL
    memory = fitting.device_memory(args.device_memory_gib)
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    os.makedirs(args.out, exist_ok=True)
    print(markdown(run(sections, profile, memory, args.out)))


def run(sections: list[str], profile: Profile, memory, out: str) -> list[dict]:
    """Runs `sections` in order, writing suite.jsonl and suite.md after every row. A section that
    raises (say, an API another jax version lacks) ends in a row {"section", "failed"}, and the next
    section runs: one call on a lent GPU measures all that can be."""
    rows = []
    with open(os.path.join(out, "suite.jsonl"), "w") as log:
        for section in sections:
            start = time.perf_counter()
            try:
                for row in SECTIONS[section](profile, memory):
                    _record(row, rows, log, out)
            except Exception as error:  # recorded; the next section runs
                _record({"section": section, "failed": f"{type(error).__name__}: {error}"[:300]}, rows, log, out)
            print(f"# {section}: {time.perf_counter() - start:.0f}s", flush=True)
    return rows


def _record(row: dict, rows: list[dict], log, out: str) -> None:
    rows.append(row)
    log.write(json.dumps(row) + "\n")
    log.flush()
    print(json.dumps(row), flush=True)
    with open(os.path.join(out, "suite.md"), "w") as f:
        f.write(markdown(rows))


if __name__ == "__main__":
    main()
