"""Throughput figures and the append-only metrics.jsonl log."""
import json
import math
import os
import time

import jax
from etils import epath

from scaling import hardware

def peak_tflops(device_kind: str | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of a device kind, or None where unknown (e.g. CPU)."""
    accelerator = hardware.by_device_kind(device_kind if device_kind is not None else jax.devices()[0].device_kind)
    return accelerator.peak_tflops if accelerator else None


def throughput(flops_per_token: float, tokens: float, seconds: float, num_devices: int) -> dict:
    """tokens/s, model TFLOP/s per device and MFU (None where the device's peak is unknown)."""
    tokens_per_s = tokens / seconds
    tflops = flops_per_token * tokens_per_s / num_devices / 1e12
    peak = peak_tflops()
    return {"tokens_per_s": tokens_per_s, "tflops_per_device": tflops, "mfu": tflops / peak if peak else None}


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def progress_line(name: str, record: dict, stop_step: int, seconds_left: float) -> str:
    """One line on where a run stands, for logs that are not a terminal (a batch job's, a pod's)."""
    evals = [f"{k} {record[k]:.4f}" for k in ("eval_loss", "eval_causal_loss") if record.get(k) is not None]
    mfu = [f"MFU {record['mfu']:.1%}"] if record.get("mfu") is not None else []
    return ", ".join([f"{name}: step {record['step']}/{stop_step}", f"loss {record['loss']:.4f}", *evals,
                      f"{record['tokens_per_s']:,.0f} tokens/s", *mfu, f"{format_duration(seconds_left)} left"])


def strict_json(record: dict) -> str:
    """One JSON line in which a non-finite float is null (JSON has no NaN or Infinity)."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(finite, allow_nan=False)


def is_local(path: str | epath.Path) -> bool:
    return "://" not in str(path)


def make_parent(path: epath.Path) -> None:
    """Creates a local file's directory (object stores such as gs:// have none to create)."""
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def append_lines(path: epath.Path, lines: list[str]) -> None:
    """Appends lines: in one write on a local file (fsynced, so an interruption never leaves half a
    line); by rewriting the file where the storage cannot append (object stores such as gs://)."""
    text = "".join(line + "\n" for line in lines)
    if is_local(path):
        make_parent(path)
        with open(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    else:
        path.write_text((path.read_text() if path.exists() else "") + text)


class MetricsLog:
    """metrics.jsonl: one strict-JSON object per logged step; written by process 0 only.

    A local file gets each record as it comes. An object store (gs://) rewrites the whole object to
    append, and takes about one write per second to an object, so there records are held and written
    at most every FLUSH_S seconds, and whenever `flush` is called: the loop flushes before every
    checkpoint and when it stops, so the file never lags the latest checkpoint.
    """

    FLUSH_S = 30.0

    def __init__(self, path: epath.Path):
        self.path = epath.Path(path)
        self.enabled = jax.process_index() == 0
        self.held: list[str] = []
        self.flushed_at = time.monotonic()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> list[dict]:
        """Drops records past `step` (logged by an interrupted run after its last checkpoint)."""
        kept = [r for r in self.read() if r["step"] <= step]
        if self.enabled:
            make_parent(self.path)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write(self, record: dict) -> None:
        if self.enabled:
            self.held.append(strict_json(record))
            if is_local(self.path) or time.monotonic() - self.flushed_at >= self.FLUSH_S:
                self.flush()

    def flush(self) -> None:
        if self.held:
            append_lines(self.path, self.held)
            self.held = []
        self.flushed_at = time.monotonic()
