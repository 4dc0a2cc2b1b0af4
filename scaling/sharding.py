"""Mesh construction and the one table of logical-axis rules (Mesh-TensorFlow / MaxText style).

Every parameter and main activation is named with logical axes; RULES maps them onto the mesh axes
('data', 'fsdp', 'expert', 'model'). Changing the parallelism changes the mesh, never the model code.
Rules apply by priority and a mesh axis is used once per array: an activation's batch takes 'fsdp', so
its 'embed' stays whole, while a parameter's 'embed' is split over 'fsdp' (ZeRO-3: the compiler
gathers each weight where it is used and reduce-scatters its gradient).
"""
import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from scaling.config import MESH_AXES, MeshConfig, ModelConfig, UsageError

RULES = (  # by priority: an array with an 'expert' axis keeps 'expert' for it, its batch goes over data x fsdp
    ("expert", "expert"),
    ("batch", ("data", "fsdp", "expert")),
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", "model"),
    ("layers", None),
)


def make_mesh(mesh_cfg: MeshConfig, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'expert', 'model') mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    shape = tuple(mesh_cfg.resolve(len(devices)).values())
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


BATCH_AXES = ("data", "fsdp", "expert")


def batch_ways(mesh: Mesh) -> int:
    """Number of shards the batch axis is split into (data x fsdp x expert)."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def check_fits(mesh: Mesh, cfg: ModelConfig, batch_size: int) -> None:
    """UsageError unless the batch and the model-parallel dimensions divide evenly over the mesh
    (an architecture adds its own checks: Architecture.check_mesh)."""
    ways = batch_ways(mesh)
    if batch_size % ways:
        raise UsageError("--batch_size", f"{batch_size} is not divisible by data x fsdp x expert = {ways} mesh ways")
    if cfg.d_model % mesh.shape["fsdp"]:
        raise UsageError("--mesh", f"fsdp={mesh.shape['fsdp']} does not divide d_model={cfg.d_model}; pick an fsdp "
                                   "axis that does")
    model_ways = mesh.shape["model"]
    for name, size in (("n_heads", cfg.n_heads), ("d_ff", cfg.d_ff), ("vocab_size", cfg.vocab_size)):
        if size % model_ways:
            raise UsageError("--mesh", f"model={model_ways} does not divide {name}={size}; pick a model axis that does")


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree whose leaves may be nn.LogicallyPartitioned (others replicate)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, length] array: batch over ('data', 'fsdp', 'expert')."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_shapes(array: jax.Array) -> set[tuple[int, ...]]:
    """Shapes of an array's per-device shards (for tests and debugging)."""
    return {tuple(np.shape(s.data)) for s in array.addressable_shards}


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Context in which logical activation constraints resolve against `mesh` and RULES."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield
