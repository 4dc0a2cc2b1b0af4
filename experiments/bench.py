"""Train-step throughput: python -m experiments.bench --arch gpt --d_model 256 --n_layers 4 --n_heads 4.

Prints tokens/s, model TFLOP/s per device, MFU (where the device's peak is known) and peak memory of
the real jitted train step: the median of --steps timed steps after compilation and --warmup untimed
ones; peak memory is XLA's memory analysis of the compiled step. Remat and microbatches left to fit
are chosen for the device memory as the sweep would (--device_memory_gib, or what the device reports).
With several --arch values the rows of a shape are timed side by side (alternating steps, one process)
and `step_ratio` is each one's step time over the first arch's: `--arch gpt,switch` gives Switch's
overhead over the GPT of the same active shape.
`--seq_lens 256,1024,4096,16384 --tokens_per_batch 16384` measures every length at the same tokens
per batch (batch = tokens_per_batch / seq_len) and `--plot FILE.png` draws tokens/s and memory vs length.
"""
import dataclasses
import json

import jax
from absl import flags

from experiments import cli
from scaling.benchmark import fit_for_timing, time_fits
from scaling.config import UsageError
from scaling.train import fitting

cli.define_model_flags()
cli.define_train_flags(("batch_size", "data", "tokenizer", "data_dir", "text_key"))
cli.define_common_flags(("mesh", "device_memory_gib"))
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_bool("json", False, "Print one JSON object per line instead of a table.")
flags.DEFINE_string("seq_lens", None, "Comma-separated sequence lengths to measure (instead of --seq_len).")
flags.DEFINE_integer("tokens_per_batch", None, "With --seq_lens: batch = tokens_per_batch / seq_len.")
flags.DEFINE_string("plot", None, "PNG file for tokens/s and peak memory against sequence length.")
flags.DEFINE_float("max_peak_mib", None, "Report but do not run shapes whose compiled peak memory exceeds this.")
FLAGS = flags.FLAGS

COLUMNS = ("arch", "d_model", "n_layers", "n_heads", "seq_len", "batch_size", "dtype", "remat", "microbatches",
           "tokens_per_s", "tflops_per_device", "mfu", "step_ms", "step_ratio", "peak_mib")


def measure(archs: list[str], seq_len: int, batch_size: int) -> list[dict]:
    """One row per arch at one shape, fitted to the device memory and timed side by side; `step_ratio`
    is the step time over the first arch's. A shape over --max_peak_mib keeps its memory figure and
    gets None for the timings."""
    memory = fitting.device_memory(cli.device_memory_gib())
    fits = [fit_for_timing(dataclasses.replace(cli.model_config(arch), seq_len=seq_len).validate(), batch_size,
                           cli.mesh_config(), memory) for arch in archs]
    peaks = [fit.run.memory_per_device() / 2**20 for fit in fits]
    timed = [FLAGS.max_peak_mib is None or peak <= FLAGS.max_peak_mib for peak in peaks]
    results = iter(time_fits([fit for fit, ok in zip(fits, timed) if ok], steps=FLAGS.steps, warmup=FLAGS.warmup))
    untimed = dict.fromkeys(("step_s", "compile_s", "tokens_per_s", "tflops_per_device", "mfu"))
    rows = [_row(fit.run, peak, next(results) if ok else untimed) for fit, peak, ok in zip(fits, peaks, timed)]
    first = rows[0]["step_s"]
    for row in rows:
        row["step_ratio"] = row["step_s"] / first if row["step_s"] and first else None
    return rows


def _row(run, peak: float, result: dict) -> dict:
    model_cfg, batch_size = run.model_cfg, run.train_cfg.batch_size
    counts = run.arch.counts(model_cfg)
    return {
        "arch": model_cfg.arch,
        "d_model": model_cfg.d_model,
        "n_layers": model_cfg.n_layers,
        "n_heads": model_cfg.n_heads,
        "d_ff": model_cfg.d_ff,
        "seq_len": model_cfg.seq_len,
        "vocab_size": model_cfg.vocab_size,
        "batch_size": batch_size,
        "dtype": model_cfg.dtype,
        "remat": model_cfg.remat,
        "microbatches": run.train_cfg.microbatches,
        "params": counts.params,
        "active_params": counts.active_params,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "step_ms": result["step_s"] and 1000 * result["step_s"],
        "peak_mib": peak,
        **result,
    }


def shapes() -> list[tuple[int, int]]:
    """(seq_len, batch_size) pairs to measure."""
    if FLAGS.seq_lens is None:
        return [(FLAGS.seq_len, FLAGS.batch_size)]
    try:
        lengths = [int(t) for t in FLAGS.seq_lens.split(",") if t]
    except ValueError:
        raise UsageError("--seq_lens", "write comma-separated integers, e.g. 256,1024,4096") from None
    tokens = FLAGS.tokens_per_batch
    if tokens is not None and any(t < 1 or tokens % t for t in lengths):
        raise UsageError("--tokens_per_batch", "must be a multiple of every --seq_lens value")
    return [(t, tokens // t if tokens else FLAGS.batch_size) for t in lengths]


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arch in dict.fromkeys(row["arch"] for row in rows):
        mine = [row for row in rows if row["arch"] == arch]
        for ax, key in zip(axes, ("tokens_per_s", "peak_mib")):
            ax.plot([r["seq_len"] for r in mine if r[key]], [r[key] for r in mine if r[key]], "o-", label=arch)
    for ax, label in zip(axes, ("training tokens/s", "peak memory (MiB)")):
        ax.set(xscale="log", xlabel="sequence length", ylabel=label)
        ax.legend()
    axes[1].set_yscale("log")
    fig.suptitle(f"same tokens per batch ({rows[0]['seq_len'] * rows[0]['batch_size']}), {rows[0]['device_kind']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv) -> None:
    del argv
    archs = [a for a in FLAGS.arch.split(",") if a]
    if not FLAGS.json:
        print("".join(f"{c:>18}" for c in COLUMNS))
    rows = []
    for seq_len, batch in shapes():
        for row in measure(archs, seq_len, batch):
            rows.append(row)
            if FLAGS.json:
                print(json.dumps(row), flush=True)
            else:
                print("".join(f"{row[k]:>18.4g}" if isinstance(row[k], float) else f"{str(row[k]):>18}" for k in COLUMNS),
                      flush=True)
    if FLAGS.plot:
        plot(rows, FLAGS.plot)


if __name__ == "__main__":
    cli.run(main)
