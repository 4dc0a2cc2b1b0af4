"""Orbax checkpointing of the sharded train state: periodic and final saves, keep the last K, resume.

Every process writes its own shards (orbax and tensorstore; gs:// works as a run directory)."""
import os

import jax
import orbax.checkpoint as ocp
from etils import epath


def _state_handler(platform: str) -> ocp.PyTreeCheckpointHandler:
    """Orbax's handler of the state, with arrays saved whole on CPUs and orbax's default elsewhere.

    Replica-parallel saving (orbax's default but where JAX_PLATFORMS names a GPU) has each replica of a
    replicated shard copy a slice of it to the host, spreading the copies over the devices and hosts.
    On CPUs every device's memory is the host's, so the slices spare no copy, and each costs a slice
    program compiled per device and array shape at a run's first save: 7 of the 28 s of
    tests/test_resilience.py's three-run sweep on 8 CPU devices (Zen 3). The state holds no PRNG key
    arrays, the one kind orbax's array metadata store is for."""
    arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=False if platform == "cpu" else None)
    defaults = [(ty, ocp.type_handlers.get_type_handler(ty)) for ty in ocp.type_handlers.supported_types()]
    return ocp.PyTreeCheckpointHandler(type_handler_registry=ocp.type_handlers.create_type_handler_registry(
        *defaults, (jax.Array, arrays)))  # a later pair overrides an earlier one


def manager(run_dir: str, keep: int, every: int) -> ocp.CheckpointManager:
    """A CheckpointManager over <run_dir>/checkpoints saving every `every` steps, keeping the last `keep`."""
    every = max(1, every)
    # An explicit rule rather than save_interval_steps: newer orbax adds a save at the first step to that.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, should_save_fn=lambda step, last: step % every == 0,
                                           create=True)
    path = epath.Path(run_dir) / "checkpoints"
    return ocp.CheckpointManager(path if path.is_absolute() else epath.Path(os.path.abspath(path)), options=options,
                                 item_handlers=_state_handler(jax.devices()[0].platform))


def restore_latest(mngr: ocp.CheckpointManager, abstract_state):
    """The latest saved state laid out like `abstract_state` (shardings included), or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    return mngr.restore(step, args=ocp.args.PyTreeRestore(abstract_state, restore_args=restore_args))


def save(mngr: ocp.CheckpointManager, step: int, state, force: bool = False) -> None:
    mngr.save(step, args=ocp.args.PyTreeSave(state), force=force)
