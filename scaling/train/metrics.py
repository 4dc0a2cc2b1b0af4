"""Throughput figures and the append-only metrics.jsonl log."""
import json
import os

import jax

# Dense bf16 peak TFLOP/s per device (REFERENCE.md section 7); matched against jax's device_kind.
PEAK_TFLOPS = (
    ("v6 lite", 918.0),
    ("v6e", 918.0),
    ("v5 lite", 197.0),
    ("v5e", 197.0),
    ("v5p", 459.0),
    ("tpu v5", 459.0),
    ("tpu v4", 275.0),
    ("h200", 989.0),
    ("h100", 989.0),
    ("a100", 312.0),
)


def peak_tflops(device_kind: str | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of a device kind, or None where unknown (e.g. CPU)."""
    kind = (device_kind if device_kind is not None else jax.devices()[0].device_kind).lower()
    return next((peak for key, peak in PEAK_TFLOPS if key in kind), None)


def throughput(flops_per_token: float, tokens: float, seconds: float, num_devices: int) -> dict:
    """tokens/s, model TFLOP/s per device and MFU (None where the device's peak is unknown)."""
    tokens_per_s = tokens / seconds
    tflops = flops_per_token * tokens_per_s / num_devices / 1e12
    peak = peak_tflops()
    return {"tokens_per_s": tokens_per_s, "tflops_per_device": tflops, "mfu": tflops / peak if peak else None}


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step; written by process 0 only."""

    def __init__(self, path: str):
        self.path = path
        self.enabled = jax.process_index() == 0

    def read(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, step: int) -> list[dict]:
        """Drops records past `step` (logged by an interrupted run after its last checkpoint)."""
        kept = [r for r in self.read() if r["step"] <= step]
        if self.enabled:
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        return kept

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
