"""Step-indexed global batches: a pure function of (seed, step), each process reading only its rows."""
import grain
import jax
import numpy as np


def shuffle_seed(seed: int) -> int:
    """A 32-bit seed for grain's shuffle, hashed so that runs with nearby seeds share no epochs.

    grain permutes epoch e with seed + e; hashing keeps seed 1's first epoch apart from seed 0's second.
    """
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def local_rows(sharding: jax.sharding.Sharding, shape: tuple[int, int]) -> range:
    """The batch rows held by this process's devices: one contiguous range."""
    rows = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows.update(range(*index[0].indices(shape[0])))
    start, stop = min(rows), max(rows) + 1
    assert len(rows) == stop - start, f"this process's rows are not contiguous: {sorted(rows)}"
    return range(start, stop)


class BatchLoader:
    """Batch `step` is positions [step * B, (step + 1) * B) of an infinite shuffled record stream.

    Epoch e of the stream is a fresh permutation of `source` (grain's MapDataset shuffle, reseeded
    each epoch by repeat), so any step can be read directly, after a restart too.
    """

    def __init__(self, source, *, global_batch_size: int, seed: int, sharding: jax.sharding.NamedSharding):
        self._stream = grain.MapDataset.source(source).shuffle(seed=shuffle_seed(seed)).repeat()
        self._shape = (global_batch_size, len(source[0]) - 1)
        self._sharding = sharding
        self._rows = local_rows(sharding, self._shape)

    def __call__(self, step: int) -> dict:
        """{"inputs", "targets": int32 [B, T], "weights": float32 [B, T] (all ones: no record is padded)}
        as global jax.Arrays."""
        first = step * self._shape[0]
        tokens = np.stack([self._stream[first + row] for row in self._rows])
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        local = {"inputs": inputs, "targets": targets, "weights": np.ones(targets.shape, np.float32)}
        return {key: self._global(value) for key, value in local.items()}

    def _global(self, rows: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self._sharding, rows, self._shape)
