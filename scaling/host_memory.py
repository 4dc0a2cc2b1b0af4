"""Host memory that XLA:CPU steps reuse instead of faulting in anew: glibc malloc kept to one arena
that neither maps nor trims.

XLA:CPU allocates a step's temporaries afresh at every execution, with malloc, from its worker
threads: one block of 196 MB for the README bench step looped, 256 MB unrolled. glibc serves such
a block with a fresh mmap (a thread's arena holds at most 64 MiB) and unmaps it when freed, so every
step faults each 4 KiB page in again and the kernel zero-fills it: 45,000 page faults and ~0.1 s of
system time per looped step there (benchmarks/README.md, CPU). With one arena, mmap off and trimming off,
the block comes from the heap and its pages stay mapped for the next step. The cost is resident
memory: the heap is never returned and keeps its fragments; with the bench step (unrolled, PyTorch
loaded too) the process held 1.72 GB against 1.07 GB without, its heap growing, and faulting, over
the first ~12 steps.

Threads pick their arena at their first malloc, so this must run before jax starts its CPU client's
threads: `scaling` applies it on import. Only for CPU-only processes (no GPU or TPU plugin for jax,
or JAX_PLATFORMS naming the CPU alone), as that is where it was measured: an accelerator host's
input pipeline threads would share one arena's lock. Only for glibc (mallopt): elsewhere a no-op.
"""
import ctypes
import os
import platform
from importlib.metadata import entry_points
from importlib.util import find_spec

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's malloc.h
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def cpu_only_process() -> bool:
    """Whether jax in this process can only run on the CPU."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.strip().lower() == "cpu"
    plugins = entry_points(group="jax_plugins")
    return not plugins and find_spec("jax_plugins") is None and find_spec("libtpu") is None


def on_glibc() -> bool:
    """Whether this process's C library is Linux's glibc (which has mallopt)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Sets glibc malloc to one arena that neither maps nor trims; False where not applied."""
    if not on_glibc() or not cpu_only_process():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
    return all([mallopt(option, value) == 1 for option, value in settings])
