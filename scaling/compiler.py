"""XLA compile options of the toolkit's train, eval and decode steps, chosen by the platform they compile for.

XLA:CPU hands dots, reductions and elementwise fusions to YNNPACK by default (recent jaxlib). Which is
faster depends on the CPU (benchmarks/README.md, CPU; train steps side by side in one process): on an
AVX2-only AMD EPYC the steps of gpt, ngpt, switch and mod ran 8-15% faster (tnl 3%) on XLA's own kernels
(Eigen matmuls, its loop fusions), where YNNPACK's batched attention dots ran at 65-75% of Eigen's rate;
on AMD EPYCs with AVX-512 YNNPACK's were faster for all five (Zen 5: 2-8%; Zen 4: 3-13%, and gpt's 8% at
1,024 tokens). So x86 CPUs with AVX2 and without AVX-512 get XLA's own kernels, and the others (AVX-512,
or not measured, as Arm) XLA's default. Options this jaxlib does not know are left out.

For compile-only GPUs (scaling/hardware.py, planning without a GPU) XLA:GPU cannot autotune the tiles
of its Triton matmul fusions, and its untuned ones fail for some shapes ("Couldn't find output tile
sizes": switch's expert matmuls on an expert=8 mesh of 16 H100s); those steps use cuBLAS' matmuls
instead. The plans hardly move: the 6e18 sweep's on 16 H100s by at most 0.2%.

The state's initialisation runs once per run, so on CPUs it is compiled for compile speed: LLVM at -O0
and, where this XLA has them, its legacy fusion emitters. At the quickstart's sizes that took the
compile of gpt's from 6.8-7.8 s to 2.3-2.7 s and mode's from 9.6-11.9 s to 3.4-4.7 s, and running it
0.1-0.4 s longer (AVX2-only AMD EPYC). Its values move by rounding only (at most 1.5e-8 for weights of
scale 0.02: LLVM's -O3 contracts multiply-adds).

`keep_compiled` turns on jax's persistent compilation cache, so that a process compiling a step it
(or an earlier process) compiled before loads it instead.
"""
import functools
import hashlib

import jax
import jax.numpy as jnp
from etils import epath
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh

from scaling import hardware

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
COMPILE_ONLY_GPU_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
FAST_COMPILE_CPU_OPTIONS = ({"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False},
                            {"xla_backend_optimization_level": 0})  # the first this XLA takes


def compiler_options(mesh: Mesh) -> dict:
    """The options for a step compiled over `mesh` ({} for real accelerators, or where XLA lacks them)."""
    return device_options(mesh.devices.flat[0])


def device_options(device) -> dict:
    """The options for a step compiled for `device` and others of its kind."""
    if device.platform == "cpu":
        cpu = hardware.cpu_description()
        xla_kernels = cpu["avx2"] and not cpu["avx512f"] and _cpu_accepts(**CPU_OPTIONS)
        return dict(CPU_OPTIONS) if xla_kernels else {}
    if device.platform == "gpu" and device not in jax.devices():  # compile-only: no GPU to autotune on
        return dict(COMPILE_ONLY_GPU_OPTIONS)
    return {}


def run_once_options(mesh: Mesh) -> dict:
    """The options for a program run once per run over `mesh`: on CPUs, the first of
    FAST_COMPILE_CPU_OPTIONS this XLA takes; elsewhere those of a step."""
    options = compiler_options(mesh)
    if mesh.devices.flat[0].platform == "cpu":
        options.update(next((fast for fast in FAST_COMPILE_CPU_OPTIONS if _cpu_accepts(**fast)), {}))
    return options


@functools.cache
def _cpu_accepts(**options) -> bool:
    """Whether XLA takes `options` (it refuses options it does not know), probed on a constant."""
    try:
        jax.jit(lambda: jnp.zeros(()), compiler_options=options).lower().compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def keep_compiled(root: str) -> str:
    """Keeps every program that takes over a second to compile in jax's persistent compilation cache under
    `root` (a local or gs:// directory) and loads it from there when it is compiled again, by this process
    or a later one: a run resumed after preemption skips its compiles on every host that reads `root`.
    Returns the directory used: `root`/<platform> (gpu, tpu), or for CPUs `root`/cpu-<hash of the CPU's
    model and instruction sets>, since XLA:CPU compiles for the host's instructions and jax's key for a
    program does not name them."""
    path = str(epath.Path(root) / _host_kind(jax.devices()[0]))
    compilation_cache.set_cache_dir(path)
    return path


def _host_kind(device) -> str:
    if device.platform != "cpu":
        return device.platform
    return "cpu-" + hashlib.sha256(hardware.cpu_signature().encode()).hexdigest()[:12]
