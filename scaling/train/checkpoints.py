"""Orbax checkpointing of the sharded train state: periodic and final saves, keep the last K, resume.

Every process writes its own shards (orbax and tensorstore; gs:// works as a run directory)."""
import os

import orbax.checkpoint as ocp
from etils import epath


def manager(run_dir: str, keep: int, every: int) -> ocp.CheckpointManager:
    """A CheckpointManager over <run_dir>/checkpoints saving every `every` steps, keeping the last `keep`."""
    every = max(1, every)
    # An explicit rule rather than save_interval_steps: newer orbax adds a save at the first step to that.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, should_save_fn=lambda step, last: step % every == 0,
                                           create=True)
    path = epath.Path(run_dir) / "checkpoints"
    return ocp.CheckpointManager(path if path.is_absolute() else epath.Path(os.path.abspath(path)), options=options)


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
    """The latest saved state laid out like `abstract_state` (shardings included), or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> None:
    mngr.save(step, args=ocp.args.StandardSave(state), force=force)
