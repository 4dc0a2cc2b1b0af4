"""A grain MapDataset's elements computed in worker processes, in order: for work that holds the GIL
(TFDS decodes each example in Python), which threads would not spread over a host's cores."""
import contextlib
import multiprocessing
import os

import cloudpickle

_dataset = None  # in a worker process: the dataset whose elements it computes


def cores() -> int:
    """The cores this process may run on: its affinity where the OS has one (Linux: containers and
    taskset narrow it), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _start_worker(pickled: bytes) -> None:
    global _dataset
    _dataset = cloudpickle.loads(pickled)


def _element(index: int):
    return _dataset[index]


@contextlib.contextmanager
def ordered_map(dataset, workers: int):
    """Yields an iterator over dataset[0], dataset[1], ..., computed by `workers` processes, or, with
    0, in this one (grain's threads). The processes are spawned, not forked (the parent may run
    threads, JAX's among them), get the dataset cloudpickled (closures included) and end with the block."""
    if not workers:
        yield iter(dataset.to_iter_dataset())
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _start_worker, (cloudpickle.dumps(dataset),)) as pool:
        yield pool.imap(_element, range(len(dataset)))
