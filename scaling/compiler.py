"""XLA compile options of the toolkit's train and eval steps, chosen by the platform they compile for.

XLA:CPU hands dots, reductions and elementwise fusions to YNNPACK by default (recent jaxlib). On the
AVX2-only development CPU the train steps of gpt, ngpt, switch and mod ran 8-15% faster (tnl 3%)
on XLA's own kernels (Eigen matmuls, its loop fusions): YNNPACK's batched attention dots ran at
65-75% of Eigen's rate and its thread pool works beside XLA's (README, Performance). Options this
jaxlib does not know are left out.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(mesh: Mesh) -> dict[str, str]:
    """The options for a step compiled over `mesh` ({} off the CPU, or where XLA lacks them)."""
    return dict(CPU_OPTIONS) if mesh.devices.flat[0].platform == "cpu" and _cpu_accepts_options() else {}


@functools.cache
def _cpu_accepts_options() -> bool:
    """Whether XLA takes CPU_OPTIONS (it refuses options it does not know), probed on a constant."""
    try:
        jax.jit(lambda: jnp.zeros(()), compiler_options=CPU_OPTIONS).lower().compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True
