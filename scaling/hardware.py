"""Accelerators this toolkit plans for: peak dense bf16 TFLOP/s (REFERENCE.md section 7), memory per
device, and the best MFU this toolkit has measured on each (None where it has not run there)."""
import dataclasses
import os
import platform

import jax

from scaling.config import UsageError


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    kinds: tuple[str, ...]  # lower-case substrings of jax's device_kind
    peak_tflops: float
    memory_gib: float
    measured_mfu: float | None = None
    measured_on: str = ""


ACCELERATORS = {
    accelerator.name: accelerator
    for accelerator in (
        Accelerator("h100", ("h100",), 989.0, 80.0, 0.350,
                    "benchmarks/results/h100_mfu.jsonl: gpt 780M, context 2048, bf16, one H100 80GB HBM3"),
        Accelerator("h200", ("h200",), 989.0, 141.0),
        Accelerator("a100", ("a100",), 312.0, 80.0),
        Accelerator("v4", ("tpu v4",), 275.0, 32.0),
        Accelerator("v5e", ("v5 lite", "v5e"), 197.0, 16.0),
        Accelerator("v5p", ("v5p", "tpu v5"), 459.0, 95.0),
        Accelerator("v6e", ("v6 lite", "v6e"), 918.0, 32.0),
    )
}
DEFAULT_MFU = 0.4


def by_device_kind(device_kind: str) -> Accelerator | None:
    """The accelerator whose device_kind this is, or None (e.g. a CPU)."""
    kind = device_kind.lower()
    return next((a for a in ACCELERATORS.values() if any(k in kind for k in a.kinds)), None)


def parse_target(text: str) -> tuple[Accelerator, int]:
    """'h100:16' -> (the H100, 16 devices); UsageError naming the known kinds."""
    name, _, count = text.partition(":")
    if name not in ACCELERATORS or not count.isdigit() or int(count) < 1:
        raise UsageError("--target", f"{text!r}: write KIND:DEVICES with KIND one of {', '.join(ACCELERATORS)}, "
                                     "e.g. h100:16 or v5p:32")
    return ACCELERATORS[name], int(count)


def cpu_description() -> dict:
    """The host CPU's model name and the instruction sets that decide XLA:CPU's kernels."""
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "avx512f": " avx512f" in info,
            "avx2": " avx2" in info}


def describe_devices() -> str:
    """What a run ran on, in words: "8 x NVIDIA H100 80GB HBM3", or for CPU devices the host's model,
    cores and whether it has AVX-512 (XLA:CPU's speed depends on it)."""
    devices = jax.devices()
    text = f"{len(devices)} x {devices[0].device_kind}"
    if devices[0].platform == "cpu":
        cpu = cpu_description()
        text += f" ({cpu['cpu']}, {cpu['cores']} cores, {'with' if cpu['avx512f'] else 'no'} AVX-512)"
    return text
