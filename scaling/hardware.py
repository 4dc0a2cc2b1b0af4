"""Accelerators this toolkit plans for: peak dense bf16 TFLOP/s (REFERENCE.md section 7), memory per
device, an MFU this toolkit has measured on each at a shape like a sweep's runs (what `--dry_run
--target` estimates wall time with; None where it has not run there), and their compile-only devices:
what XLA compiles for without having them (a GPU's description for XLA:GPU, a TPU slice's torus for
libtpu)."""
import dataclasses
import functools
import os
import pathlib
import platform

import jax
from jax.experimental import topologies

from scaling.config import UsageError


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """A GPU as XLA:GPU's compiler sees it (NVIDIA's datasheet figures; per-SM limits of its compute
    capability). It decides fusions, cuDNN's kernels and the compiler's own memory limit."""

    description: str  # what jax reports as device_kind
    compute_capability: tuple[int, int]
    sms: int
    fp32_units_per_sm: int
    clock_ghz: float
    memory_bandwidth: float  # bytes/s
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int

    def target_config(self, memory_gib: float) -> str:
        """The stream_executor GpuTargetConfig text proto that compiles for this GPU without one."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_sm} threads_per_core_limit: 2048 core_count: {self.sms}
  fpus_per_core: {self.fp32_units_per_sm} block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: {int(self.memory_bandwidth)} l2_cache_size: {self.l2_bytes}
  clock_rate_ghz: {self.clock_ghz} device_memory_size: {int(memory_gib * 2**30)}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{self.description}"
"""


HOPPER_SHARED_MEMORY = (233472, 232448)  # shared memory bytes per SM, per block (opt-in), of H100 and H200


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    kinds: tuple[str, ...]  # lower-case substrings of jax's device_kind
    peak_tflops: float
    memory_gib: float
    measured_mfu: float | None = None
    measured_on: str = ""
    gpu: GpuSpec | None = None
    torus_dims: int = 0  # a TPU slice's chip torus: 3 dimensions (v4, v5p) or 2 (v5e, v6e)


ACCELERATORS = {
    accelerator.name: accelerator
    for accelerator in (
        Accelerator("h100", ("h100",), 989.0, 80.0, 0.350,
                    "benchmarks/results/h100_mfu.jsonl: gpt 780M, context 2048, bf16, one H100 80GB HBM3",
                    GpuSpec("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 1.98, 3.35e12, 50 * 2**20,
                            *HOPPER_SHARED_MEMORY)),
        Accelerator("h200", ("h200",), 989.0, 141.0, 0.480,
                    "benchmarks/results/h200_suite.jsonl: gpt 350M, context 1024, bf16, one H200",
                    gpu=GpuSpec("NVIDIA H200", (9, 0), 132, 128, 1.98, 4.8e12, 50 * 2**20,
                                *HOPPER_SHARED_MEMORY)),
        Accelerator("a100", ("a100",), 312.0, 80.0,
                    gpu=GpuSpec("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 1.41, 2.039e12,
                                40 * 2**20, 167936, 166912)),
        Accelerator("v4", ("tpu v4",), 275.0, 32.0, torus_dims=3),
        Accelerator("v5e", ("v5 lite", "v5e"), 197.0, 16.0, torus_dims=2),
        Accelerator("v5p", ("v5p", "tpu v5"), 459.0, 95.0, torus_dims=3),
        Accelerator("v6e", ("v6 lite", "v6e"), 918.0, 32.0, torus_dims=2),
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


def usable_memory_gib(accelerator: Accelerator) -> float:
    """What a step may use of one device, as jax reports it there (`bytes_limit`): on a GPU its
    allocator's share, XLA_PYTHON_CLIENT_MEM_FRACTION of the memory (jax's default 0.75); on a TPU all."""
    if accelerator.gpu is None:
        return accelerator.memory_gib
    return accelerator.memory_gib * float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))


def compile_only_devices(accelerator: Accelerator, count: int) -> list | None:
    """`count` devices of `accelerator` that XLA compiles for without having them, or None where it
    cannot here. GPUs (8 per host) need jax's CUDA plugin (`pip install "jax[cuda12]"`; on a host
    without a GPU, with JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 so that it loads); TPUs need libtpu (`pip
    install "jax[tpu]"`) and a slice of whole hosts (a power of two, 4+ chips)."""
    try:
        if accelerator.gpu is not None:
            per_host = 8 if count % 8 == 0 else count
            config = accelerator.gpu.target_config(accelerator.memory_gib)
            devices = topologies.get_topology_desc(platform="cuda", topology=f"1x{count // per_host}x{per_host}",
                                                   target_config=config).devices
        else:
            devices = topologies.get_topology_desc(f"{accelerator.name}:{_slice_shape(count, accelerator.torus_dims)}",
                                                   "tpu").devices
    except (NotImplementedError, RuntimeError):  # no plugin or libtpu; a slice shape the kind does not have
        return None
    return devices if len(devices) == count else None


def _slice_shape(chips: int, dims: int) -> str:
    """The torus of a TPU slice: 16 chips in 3 dimensions -> '2x2x4', 32 in 2 -> '4x8'."""
    sides = [1] * dims
    for i in range(chips.bit_length() - 1):
        sides[i % dims] *= 2
    return "x".join(str(side) for side in sorted(sides, key=lambda side: (side == 1, side)))


@functools.cache
def _cpuinfo() -> str:
    return pathlib.Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""


def cpu_description() -> dict:
    """The host CPU's model name and the instruction sets that decide XLA:CPU's kernels."""
    info = _cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "avx512f": " avx512f" in info,
            "avx2": " avx2" in info}


def cpu_signature() -> str:
    """What XLA:CPU compiles for, as one line: the machine, the CPU's model name and its instruction sets."""
    fields = {}
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return " ".join([platform.machine(), cpu_description()["cpu"], fields.get("flags", fields.get("Features", ""))])


def describe_devices() -> str:
    """What a run ran on, in words: "8 x NVIDIA H100 80GB HBM3", or for CPU devices the host's model,
    cores and whether it has AVX-512 (XLA:CPU's speed depends on it)."""
    devices = jax.devices()
    text = f"{len(devices)} x {devices[0].device_kind}"
    if devices[0].platform == "cpu":
        cpu = cpu_description()
        text += f" ({cpu['cpu']}, {cpu['cores']} cores, {'with' if cpu['avx512f'] else 'no'} AVX-512)"
    return text
