"""Throughput figures and the append-only metrics.jsonl log."""
import json
import math
import os

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


def strict_json(record: dict) -> str:
    """One JSON line in which a non-finite float is null (JSON has no NaN or Infinity)."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(finite, allow_nan=False)


def is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def make_parent(path: epath.Path) -> None:
    """Creates a local file's directory (object stores such as gs:// have none to create)."""
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)


def append_line(path: epath.Path, line: str) -> None:
    """Appends one line: in one write on a local file (fsynced, so an interruption never leaves half a
    line); by rewriting the file where the storage cannot append (object stores such as gs://)."""
    if is_local(path):
        make_parent(path)
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        path.write_text((path.read_text() if path.exists() else "") + line + "\n")


class MetricsLog:
    """metrics.jsonl: one strict-JSON object per logged step; written by process 0 only."""

    def __init__(self, path: epath.Path):
        self.path = epath.Path(path)
        self.enabled = jax.process_index() == 0

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
            append_line(self.path, strict_json(record))
