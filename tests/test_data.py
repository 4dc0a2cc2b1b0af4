"""Tests of scaling.data: sources, fingerprints and the step-indexed, sharded batch loader."""
import json
import sys
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling import data
from scaling.config import UsageError
from scaling.data import loader, pystdlib, synthetic

AXES = ("data", "model", "expert")
BATCH_SPEC = PartitionSpec(("data", "expert"), None)


def sharded():
    """The batch sharding of an 8-device (4, 2, 1) mesh."""
    return NamedSharding(jax.make_mesh((4, 2, 1), AXES), BATCH_SPEC)


def single_device():
    """The same batch sharding on a one-device mesh."""
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), AXES)
    return NamedSharding(mesh, BATCH_SPEC)


def indexed_source(records: int, seq_len: int) -> list:
    """Record i is seq_len + 1 copies of i, so a batch tells which records it holds."""
    return [np.full(seq_len + 1, i, np.int32) for i in range(records)]


def host(batch: dict) -> dict:
    return {key: np.asarray(value) for key, value in batch.items()}


@pytest.mark.parametrize("name", ["pystdlib", "synthetic"])
@pytest.mark.parametrize("split", ["train", "eval"])
def test_records_are_int32_bytes_of_seq_len_plus_one(name, split):
    source = data.make_source(name, split, 32)
    assert len(source) > 100
    for index in (0, 1, len(source) // 2, len(source) - 1):
        record = source[index]
        assert record.dtype == np.int32 and record.shape == (33,)
        assert 0 <= record.min() and record.max() < data.vocab_size(name)


def test_vocab_size_is_bytes():
    assert [data.vocab_size(n) for n in ("pystdlib", "synthetic", "tfds:lm1b")] == [256, 256, 256]


@pytest.mark.parametrize("name", ["wikitext", "tfds:", "PYSTDLIB", ""])
def test_unknown_name_is_a_usage_error(name):
    for call in (lambda: data.make_source(name, "train", 8), lambda: data.vocab_size(name)):
        with pytest.raises(UsageError) as error:
            call()
        assert error.value.flag == "--data" and "pystdlib" in str(error.value)


def test_pystdlib_splits_are_disjoint_and_cover_the_corpus():
    corpus = pystdlib.load()
    train, evaluation = set(corpus.files["train"]), set(corpus.files["eval"])
    assert not train & evaluation
    assert len(train) + len(evaluation) == corpus.fingerprint["files"]
    assert 0.02 < len(evaluation) / corpus.fingerprint["files"] < 0.08
    assert not any("site-packages" in path for path in train | evaluation)
    assert list(corpus.files["train"]) == sorted(train)
    separators = len(train) - 1 + len(evaluation) - 1
    streams = len(corpus.tokens["train"]) + len(corpus.tokens["eval"])
    assert streams == corpus.fingerprint["bytes"] + separators
    assert corpus.tokens["train"].dtype == np.uint8


def test_pystdlib_split_is_a_stable_hash_of_the_path():
    assert pystdlib.split_of("os.py") == pystdlib.split_of("os.py")
    assert {pystdlib.split_of(f"m{i}.py") for i in range(200)} == {"train", "eval"}


def test_pystdlib_fingerprint_is_deterministic_and_json():
    first = data.fingerprint("pystdlib")
    pystdlib.load.cache_clear()
    second = data.fingerprint("pystdlib")
    assert first == second
    assert set(first) == {"name", "python_version", "files", "bytes", "sha256"}
    assert json.loads(json.dumps(first)) == first
    assert len(first["sha256"]) == 64 and first["files"] > 500


def test_pystdlib_windows_overlap_by_exactly_one_token():
    seq_len = 16
    source = data.make_source("pystdlib", "train", seq_len)
    stream = pystdlib.load().tokens["train"]
    assert len(source) == (len(stream) - 1) // seq_len
    for index in (0, 7, len(source) - 2):
        assert source[index][-1] == source[index + 1][0]
        np.testing.assert_array_equal(source[index], stream[index * seq_len : (index + 1) * seq_len + 1])


def test_seq_len_longer_than_the_data_is_a_usage_error():
    with pytest.raises(UsageError) as error:
        data.make_source("pystdlib", "eval", 10**8)
    assert error.value.flag == "--seq_len"


def test_synthetic_is_deterministic_and_follows_a_sparse_chain():
    train = data.make_source("synthetic", "train", 64)
    assert len(train) == synthetic.RECORDS
    np.testing.assert_array_equal(train[5], data.make_source("synthetic", "train", 64)[5])
    assert not np.array_equal(train[5], train[6])
    assert not np.array_equal(train[5], data.make_source("synthetic", "eval", 64)[5])
    successors = synthetic.successor_table()
    for index in range(20):
        record = train[index]
        assert all(b in successors[a] for a, b in zip(record[:-1], record[1:]))


def test_fingerprints_are_json():
    for name in ("synthetic", "tfds:lm1b"):
        fingerprint = data.fingerprint(name)
        assert fingerprint["name"] == name and json.loads(json.dumps(fingerprint)) == fingerprint


def test_batches_are_shifted_global_arrays():
    sharding = sharded()
    source = data.make_source("synthetic", "train", 16)
    batch = data.BatchLoader(source, global_batch_size=8, seed=0, sharding=sharding)(3)
    for key, dtype in (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32)):
        assert batch[key].shape == (8, 16) and batch[key].dtype == dtype
        assert batch[key].sharding.is_equivalent_to(sharding, 2)
    batch = host(batch)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(batch["weights"], 1.0)


def test_loader_is_a_pure_function_of_seed_and_step():
    source = data.make_source("synthetic", "train", 8)
    make = lambda seed: data.BatchLoader(source, global_batch_size=8, seed=seed, sharding=sharded())
    first, again, other_seed = make(1), make(1), make(2)
    np.testing.assert_array_equal(host(first(4))["inputs"], host(first(4))["inputs"])
    np.testing.assert_array_equal(host(first(4))["inputs"], host(again(4))["inputs"])
    assert not np.array_equal(host(first(4))["inputs"], host(first(5))["inputs"])
    assert not np.array_equal(host(first(4))["inputs"], host(other_seed(4))["inputs"])


def test_each_epoch_visits_every_record_once_in_a_fresh_order():
    records, batch_size = 24, 8
    source = indexed_source(records, 4)
    load = data.BatchLoader(source, global_batch_size=batch_size, seed=0, sharding=sharded())
    steps = records // batch_size
    visits = np.concatenate([host(load(step))["inputs"][:, 0] for step in range(2 * steps)])
    first, second = visits[:records], visits[records:]
    assert sorted(first) == list(range(records)) and sorted(second) == list(range(records))
    assert not np.array_equal(first, second)


def test_sharded_batch_equals_single_device_batch():
    source = data.make_source("synthetic", "train", 16)
    on_mesh = data.BatchLoader(source, global_batch_size=8, seed=3, sharding=sharded())(2)
    on_one = data.BatchLoader(source, global_batch_size=8, seed=3, sharding=single_device())(2)
    assert len(on_mesh["inputs"].addressable_shards) == 8
    for key in on_mesh:
        np.testing.assert_array_equal(np.asarray(on_mesh[key]), np.asarray(on_one[key]))
        for shard in on_mesh[key].addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(on_one[key])[shard.index])


def fake_sharding(row_slices):
    """Stands in for a sharding of which this process holds only `row_slices` (another host has the rest)."""
    index_map = {device: (rows, slice(None)) for device, rows in enumerate(row_slices)}
    return types.SimpleNamespace(addressable_devices_indices_map=lambda shape: index_map)


def test_local_rows_of_a_process():
    assert loader.local_rows(sharded(), (8, 4)) == range(8)
    assert loader.local_rows(fake_sharding([slice(4, 6), slice(6, 8), slice(4, 6)]), (8, 4)) == range(4, 8)
    with pytest.raises(AssertionError):
        loader.local_rows(fake_sharding([slice(0, 2), slice(4, 6)]), (8, 4))


def test_loader_reads_only_local_rows(monkeypatch):
    reads = []
    source = indexed_source(16, 4)

    class CountingSource(list):
        def __getitem__(self, index):
            reads.append(index)
            return list.__getitem__(self, index)

    monkeypatch.setattr(loader, "local_rows", lambda sharding, shape: range(2, 4))
    monkeypatch.setattr(jax, "make_array_from_process_local_data", lambda sharding, rows, shape: rows)
    batch = data.BatchLoader(CountingSource(source), global_batch_size=8, seed=0, sharding=None)(1)
    assert batch["inputs"].shape == (2, 4) and len(reads) == 1 + 2


DOCUMENTS = [
    {"text": b"hello"},
    {"text": "caf\u00e9 au lait, s'il vous pla\u00eet".encode()},
    {"text": b"a\x00b"},
]


@pytest.fixture
def fake_tfds(monkeypatch):
    """A tensorflow_datasets module whose data_source serves DOCUMENTS for the splits it has."""
    calls = []

    def data_source(name, *, split):
        calls.append((name, split))
        if split not in fake.splits:
            raise ValueError(f"Unknown split {split!r}")
        return list(DOCUMENTS)

    splits = {"train", "validation", "test"}
    fake = types.SimpleNamespace(data_source=data_source, splits=splits, calls=calls)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    return fake


def test_tfds_records_truncate_and_pad_documents(fake_tfds):
    source = data.make_source("tfds:lm1b", "train", 8)
    assert fake_tfds.calls == [("lm1b", "train")] and len(source) == len(DOCUMENTS)
    np.testing.assert_array_equal(source[0], list(b"hello") + [0, 0, 0, 0])
    np.testing.assert_array_equal(source[1], list(DOCUMENTS[1]["text"][:9]))
    np.testing.assert_array_equal(source[2], list(b"ab") + [0] * 7)
    assert all(source[i].dtype == np.int32 for i in range(3))


def test_tfds_eval_prefers_validation_then_test(fake_tfds):
    data.make_source("tfds:lm1b", "eval", 8)
    assert fake_tfds.calls[-1] == ("lm1b", "validation")
    fake_tfds.splits.remove("validation")
    data.make_source("tfds:lm1b", "eval", 8)
    assert fake_tfds.calls[-1] == ("lm1b", "test")
    fake_tfds.splits.remove("test")
    with pytest.raises(UsageError):
        data.make_source("tfds:lm1b", "eval", 8)


def test_tfds_padding_has_zero_weight(fake_tfds):
    source = data.make_source("tfds:c4/en", "train", 8)
    batch = host(data.BatchLoader(source, global_batch_size=3, seed=0, sharding=single_device())(0))
    by_first_byte = {doc["text"][0]: doc["text"].replace(b"\x00", b"") for doc in DOCUMENTS}
    for inputs, targets, weights in zip(batch["inputs"], batch["targets"], batch["weights"]):
        document = by_first_byte[inputs[0]]
        real = min(len(document) - 1, 8)
        np.testing.assert_array_equal(weights, [1.0] * real + [0.0] * (8 - real))
        np.testing.assert_array_equal(targets[:real], list(document[1 : real + 1]))


def test_tfds_without_the_extra_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(UsageError) as error:
        data.make_source("tfds:lm1b", "train", 8)
    assert error.value.flag == "--data" and "pip install -e '.[data]'" in str(error.value)
