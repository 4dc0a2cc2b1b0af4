"""Stopping cleanly when the job is asked to stop (SIGTERM: TPU maintenance, SLURM's time limit or
preemption): the loop checkpoints the current step and exits, and re-running the command resumes.

Several processes must agree on the step at which they all save: JAX's preemption sync service
(started by jax.distributed.initialize, which installs its own SIGTERM handler) gives that step,
through orbax's CheckpointManager.reached_preemption. A single process catches SIGTERM itself.
"""
import signal

import jax


class Preempted(Exception):
    """The run saved a checkpoint at `step` and stopped on request; re-running resumes it."""

    def __init__(self, run_name: str, step: int):
        super().__init__(f"run {run_name} stopped at step {step} (SIGTERM): checkpoint saved; "
                         "re-run the same command to resume")
        self.step = step


class PreemptionWatch:
    """A context in which `reached(step, mngr)` says whether to save and stop after `step`."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "PreemptionWatch":
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._request)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _request(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def reached(self, step: int, mngr) -> bool:
        return self.requested if jax.process_count() == 1 else mngr.reached_preemption(step)
