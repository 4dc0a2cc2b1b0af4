"""Runs fitted to device memory: the cheapest rematerialisation and number of microbatches that fit.

Each candidate is judged by compiling the run's real train step ahead of time (nothing is allocated)
and reading XLA's memory analysis against the memory of one device, less 10% headroom. The device
memory is what the backend reports (`memory_stats()['bytes_limit']`), or a given figure (how a
laptop plans for an 80 GiB GPU or a 95 GiB v5p chip with fake devices); where neither is known (a
CPU) nothing is compiled and the settings left to fit are no remat and one microbatch.

Candidates, cheapest first: remat none, then dots (keep the weight matmuls' outputs, recompute the rest),
then full (recompute the block: one more forward pass), each with the fewest microbatches (powers of
two dividing the per-device batch) that fit while a microbatch keeps at least MIN_MICROBATCH_TOKENS
tokens per device; then full remat with smaller microbatches, down to one sequence per device.
Memory falls as microbatches grow, so each policy is settled by a bisection over its microbatch
counts. If nothing fits on a mesh that replicates the state over 'data', the same search runs with
that axis turned into 'fsdp' (parameters and optimizer state sharded, ZeRO-3), and the note says so.
"""
import dataclasses
import time

import jax

from scaling import sharding
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.train.run import Run

HEADROOM = 0.9
MIN_MICROBATCH_TOKENS = 4096
REMAT_ORDER = ("none", "dots", "full")
GIB = 2**30


@dataclasses.dataclass
class Fit:
    """A run whose settings fit, its mesh, what its step holds per device, and how it was chosen."""

    run: Run
    mesh_cfg: MeshConfig
    bytes_per_device: int | None
    note: str = ""
    seconds: float = 0.0  # spent fitting (compiling candidates)

    @property
    def gib_per_device(self) -> float | None:
        return None if self.bytes_per_device is None else self.bytes_per_device / GIB


def device_memory(gib: float | None = None) -> int | None:
    """Usable bytes of one device: `gib` if given, else what the backend reports (None on a CPU)."""
    if gib:
        return int(gib * GIB)
    stats = jax.local_devices()[0].memory_stats()
    return stats.get("bytes_limit") if stats else None


def _microbatch_counts(model_cfg: ModelConfig, train_cfg: TrainConfig, ways: int) -> list[int]:
    per_device = train_cfg.batch_size // ways
    if train_cfg.microbatches:
        return [train_cfg.microbatches]
    return [m for m in (2**i for i in range(per_device.bit_length())) if per_device % m == 0]


def _plans(model_cfg: ModelConfig, train_cfg: TrainConfig, ways: int) -> list[tuple[str, list[int]]]:
    """(remat policy, microbatch counts ascending) to search, cheapest first."""
    counts = _microbatch_counts(model_cfg, train_cfg, ways)
    per_device = train_cfg.batch_size // ways
    roomy = [m for m in counts if m == counts[0] or per_device // m * model_cfg.seq_len >= MIN_MICROBATCH_TOKENS]
    remats = REMAT_ORDER if model_cfg.remat == "auto" else (model_cfg.remat,)
    plans = [(remat, roomy) for remat in remats]
    if remats[-1] == "full" and len(counts) > len(roomy):
        plans.append(("full", counts[len(roomy):]))
    return plans


class _Search:
    """Compiles candidates of one run on one mesh, remembering every compiled candidate's memory."""

    def __init__(self, model_cfg, train_cfg, mesh_cfg, budget, run_options, devices):
        self.model_cfg, self.train_cfg, self.mesh_cfg, self.budget = model_cfg, train_cfg, mesh_cfg, budget
        self.mesh = sharding.make_mesh(mesh_cfg, devices)
        self.run_options = run_options
        self.smallest = None

    def run(self, remat: str, microbatches: int) -> Run:
        return Run(self.model_cfg.replace(remat=remat), dataclasses.replace(self.train_cfg, microbatches=microbatches),
                   self.mesh, **self.run_options)

    def fits(self, run: Run) -> bool:
        try:
            needed = run.memory_per_device()
        except jax.errors.JaxRuntimeError as error:  # e.g. the GPU autotuner cannot allocate its buffers
            if "RESOURCE_EXHAUSTED" not in str(error):
                raise
            return False
        self.smallest = needed if self.smallest is None else min(self.smallest, needed)
        return needed <= self.budget

    def first_fit(self) -> Run | None:
        """The cheapest fitting candidate. The cheapest of all is tried first (it usually fits), then the
        one that needs least (the last policy's most microbatches: if it does not fit, none does); then
        per policy, its microbatch counts are bisected."""
        plans = _plans(self.model_cfg, self.train_cfg, sharding.batch_ways(self.mesh))
        if self.fits(cheapest := self.run(plans[0][0], plans[0][1][0])):
            return cheapest
        if not self.fits(self.run(plans[-1][0], plans[-1][1][-1])):
            return None
        for remat, counts in plans:
            if not self.fits(largest := self.run(remat, counts[-1])):
                continue
            lo, hi, best = 0, len(counts) - 1, largest
            while lo < hi:
                mid = (lo + hi) // 2
                if self.fits(candidate := self.run(remat, counts[mid])):
                    hi, best = mid, candidate
                else:
                    lo = mid + 1
            return best
        return None


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh_cfg: MeshConfig, memory: int | None, *,
        name: str = "the run", devices=None, **run_options) -> Fit:
    """The run with remat and microbatches chosen to fit `memory` bytes per device (see the module
    docstring); explicit settings are only checked. The mesh spans `devices` (default: all);
    `run_options` go to Run (loss, total_steps). UsageError naming the run and the fixes when nothing fits."""
    start = time.perf_counter()
    fitted = _fit(model_cfg, train_cfg, mesh_cfg, memory, name, devices, run_options)
    fitted.seconds = time.perf_counter() - start
    return fitted


def _fit(model_cfg, train_cfg, mesh_cfg, memory, name, devices, run_options) -> Fit:
    if memory is None:
        return Fit(Run(model_cfg, train_cfg, sharding.make_mesh(mesh_cfg, devices), **run_options), mesh_cfg, None)
    budget = int(HEADROOM * memory)
    search = _Search(model_cfg, train_cfg, mesh_cfg, budget, run_options, devices)
    if (run := search.first_fit()) is not None:
        return Fit(run, mesh_cfg, run.memory_per_device())
    mesh = search.mesh
    if mesh.shape["data"] > 1 and mesh.shape["fsdp"] == 1:
        sharded_cfg = dataclasses.replace(mesh_cfg, data=1, fsdp=mesh.shape["data"])
        sharded = _Search(model_cfg, train_cfg, sharded_cfg, budget, run_options, devices)
        if (run := sharded.first_fit()) is not None:
            note = f"fsdp={mesh.shape['data']}: the state replicated over data={mesh.shape['data']} does not fit"
            return Fit(run, sharded_cfg, run.memory_per_device(), note)
    explicit = model_cfg.remat != "auto" or train_cfg.microbatches
    flag = "--remat" if explicit and model_cfg.remat != "auto" else "--microbatches" if explicit else "--batch_size"
    needed = "more than the device holds" if search.smallest is None else f"{search.smallest / GIB:.1f} GiB"
    raise UsageError(flag, f"{name} needs {needed} per device even with its least-memory "
                           f"setting, over the {budget / GIB:.1f} GiB usable; use more devices, an fsdp axis "
                           "(--mesh fsdp=N), a smaller --batch_size" + (", or let remat and microbatches be chosen "
                                                                          "(auto, 0)" if explicit else ""))
