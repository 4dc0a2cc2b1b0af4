"""Train-step throughput: python -m experiments.bench --arch gpt --d_model 256 --n_layers 4 --n_heads 4.

Prints tokens/s, model TFLOP/s per device and MFU (where the device's peak is known) of the real
jitted train step: the median of --steps timed steps after compilation and --warmup untimed ones.
With several --arch values the rows are measured in one process, so their ratio is meaningful.
"""
import json

import jax
from absl import flags

from experiments import cli
from scaling.benchmark import time_train_step

cli.define_model_flags()
cli.define_common_flags()
flags.DEFINE_integer("batch_size", 8, "Global batch size in sequences.")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_bool("json", False, "Print one JSON object per line instead of a table.")
FLAGS = flags.FLAGS

COLUMNS = ("arch", "d_model", "n_layers", "n_heads", "seq_len", "batch_size", "dtype", "tokens_per_s",
           "tflops_per_device", "mfu", "step_ms")


def measure(arch: str) -> dict:
    model_cfg = cli.model_config(arch)
    result = time_train_step(model_cfg, FLAGS.batch_size, cli.mesh_config(), steps=FLAGS.steps, warmup=FLAGS.warmup)
    return {
        "arch": arch,
        "d_model": model_cfg.d_model,
        "n_layers": model_cfg.n_layers,
        "n_heads": model_cfg.n_heads,
        "d_ff": model_cfg.d_ff,
        "seq_len": model_cfg.seq_len,
        "vocab_size": model_cfg.vocab_size,
        "batch_size": FLAGS.batch_size,
        "dtype": model_cfg.dtype,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "step_ms": 1000 * result["step_s"],
        **result,
    }


def format_row(row: dict) -> str:
    cells = []
    for key in COLUMNS:
        value = row[key]
        cells.append(f"{value:>18.4g}" if isinstance(value, float) else f"{str(value):>18}")
    return "".join(cells)


def main(argv) -> None:
    del argv
    archs = [a for a in FLAGS.arch.split(",") if a]
    rows = [measure(arch) for arch in archs]
    if FLAGS.json:
        for row in rows:
            print(json.dumps(row))
        return
    print("".join(f"{c:>18}" for c in COLUMNS))
    for row in rows:
        print(format_row(row))


if __name__ == "__main__":
    cli.run(main)
