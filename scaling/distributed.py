"""Joining a multi-process (multi-host) job: every process runs the same program over one global mesh."""
import os

import jax


def initialize() -> None:
    """Calls jax.distributed.initialize when this process is one of several.

    launch/local.py sets SCALING_COORDINATOR, SCALING_NUM_PROCESSES and SCALING_PROCESS_ID (and
    SCALING_CPU_COLLECTIVES=gloo for CPU-only jobs). Under launch/slurm.py and launch/tpu_pod.py
    (SCALING_DISTRIBUTED=auto), a SLURM step of several tasks, or a GKE TPU slice, JAX finds the
    coordinator itself. A single process does nothing.
    """
    num_processes = int(os.environ.get("SCALING_NUM_PROCESSES", "1"))
    if num_processes > 1:
        if os.environ.get("SCALING_CPU_COLLECTIVES"):
            jax.config.update("jax_cpu_collectives_implementation", os.environ["SCALING_CPU_COLLECTIVES"])
        jax.distributed.initialize(
            coordinator_address=os.environ["SCALING_COORDINATOR"],
            num_processes=num_processes,
            process_id=int(os.environ["SCALING_PROCESS_ID"]),
        )
    elif (
        os.environ.get("SCALING_DISTRIBUTED") == "auto"
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    ):
        jax.distributed.initialize()
