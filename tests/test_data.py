"""Tests of scaling.data: sources, tokenizers, packing, fingerprints, bytes per token, a locally built
TFDS dataset (the `tfds_text` fixture of conftest.py) and the step-indexed, sharded batch loader."""
import collections
import hashlib
import json
import os
import re
import shutil
import sys
import types

import grain

import jax
import numpy as np
import pytest
import sentencepiece
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling import data
from scaling.config import UsageError
from scaling.data import loader, packing, pystdlib, sources, spm_training, synthetic, tokenizers
from scaling.data import tfds_text as tfds_text_module
from scaling.data.windows import WindowSource

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


def test_vocab_size_is_bytes_and_end_of_document():
    assert [data.vocab_size(n) for n in ("pystdlib", "synthetic", "tfds:lm1b")] == [257, 256, 257]


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
    assert [len(corpus.documents[split]) for split in ("train", "eval")] == [len(train), len(evaluation)]
    assert sum(map(len, corpus.documents["train"] + corpus.documents["eval"])) == corpus.fingerprint["bytes"]


def test_pystdlib_split_is_a_stable_hash_of_the_path():
    assert pystdlib.split_of("os.py") == pystdlib.split_of("os.py")
    assert {pystdlib.split_of(f"m{i}.py") for i in range(200)} == {"train", "eval"}


def test_pystdlib_fingerprint_is_deterministic_and_json():
    first = data.fingerprint("pystdlib")
    pystdlib.load.cache_clear()
    second = data.fingerprint("pystdlib")
    assert first == second
    assert set(first) == {"name", "python_version", "files", "bytes", "sha256", "tokenizer", "packing"}
    assert first["tokenizer"] == {"spec": "bytes", "vocab_size": 257, "eod_id": 256}
    assert json.loads(json.dumps(first)) == first
    assert len(first["sha256"]) == 64 and first["files"] > 500


def test_pystdlib_windows_overlap_by_exactly_one_token():
    source = data.make_source("pystdlib", "train", 16)
    for index in (0, 7, len(source) - 2):
        assert source[index][-1] == source[index + 1][0]


def stream_of(source) -> list[int]:
    """The token stream a window source covers: the first token, then every window's targets."""
    return [int(source[0][0])] + [int(t) for index in range(len(source)) for t in source[index][1:]]


def test_pystdlib_stream_is_the_files_joined_by_end_of_document():
    stream = stream_of(data.make_source("pystdlib", "eval", 128))
    eod = tokenizers.ByteTokenizer.eod_id
    documents = [sources.valid_utf8(text) for text in pystdlib.load().documents["eval"]]
    joined = [eod] + [token for text in documents for token in [*text, eod]]
    assert stream == joined[: len(stream)] and len(joined) - len(stream) < 128
    assert data.bytes_per_token("pystdlib", "eval") == 1.0


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


def test_synthetic_fingerprint_is_json_and_takes_no_tokenizer():
    fingerprint = data.fingerprint("synthetic")
    assert fingerprint["name"] == "synthetic" and json.loads(json.dumps(fingerprint)) == fingerprint
    assert data.bytes_per_token("synthetic", "eval") is None
    with pytest.raises(UsageError) as error:
        data.make_source("synthetic", "train", 8, tokenizer="spm:1024")
    assert error.value.flag == "--tokenizer"


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


def test_tfds_without_the_extra_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(UsageError) as error:
        data.make_source("tfds:lm1b", "train", 8)
    assert error.value.flag == "--data" and "pip install -e '.[data]'" in str(error.value)


def test_byte_tokenizer_keeps_every_byte_and_ends_documents_with_an_id_no_byte_takes():
    tokenizer = tokenizers.ByteTokenizer()
    assert tokenizer.encode("caf\u00e9").tolist() == list("caf\u00e9".encode())
    assert tokenizer.encode(b"\x00\xff").tolist() == [0, 255] and tokenizer.encode("").dtype == np.int32
    assert tokenizer.eod_id == 256 and tokenizer.vocab_size == 257


@pytest.mark.parametrize("spec", ["bpe", "spm", "spm:", "spm:abc", "spm:-300", "SPM:300", "bytes ", "spm:100"])
def test_bad_tokenizer_spec_is_one_usage_error_line(spec):
    with pytest.raises(UsageError) as error:
        data.vocab_size("pystdlib", spec)
    assert error.value.flag == "--tokenizer" and "\n" not in str(error.value)
    assert str(spm_training.MIN_VOCAB) in str(error.value)


def random_documents(seed: int) -> list[bytes]:
    """0-12 documents of 0-40 random bytes (NUL and empty documents included)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, rng.integers(0, 41), dtype=np.uint8).tobytes() for _ in range(rng.integers(0, 13))]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("seq_len", [1, 3, 16])
def test_windows_of_an_epoch_are_the_stream_nothing_lost_duplicated_or_padded(seed, seq_len):
    documents = random_documents(seed)
    packed = packing.pack(grain.MapDataset.source(documents), tokenizers.ByteTokenizer())
    joined = [256] + [token for text in documents for token in [*text, 256]]
    assert packed.tokens.tolist() == joined
    assert packed.text_bytes == sum(len(text) + 1 for text in documents) == len(joined) - 1
    source = WindowSource(packed.tokens, seq_len)
    assert all(len(source[index]) == seq_len + 1 for index in range(len(source)))
    covered = 1 + len(source) * seq_len
    assert (stream_of(source) if len(source) else joined[:1]) == joined[:covered]
    assert len(joined) - covered < seq_len  # only the last partial window is dropped


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_tokens", [1, 20, 60, 10_000])
def test_a_capped_stream_is_the_whole_documents_that_fit(seed, max_tokens):
    documents = random_documents(seed)
    whole = packing.pack(grain.MapDataset.source(documents), tokenizers.ByteTokenizer())
    capped = packing.pack(grain.MapDataset.source(documents), tokenizers.ByteTokenizer(), max_tokens)
    kept = documents[:capped.documents]
    assert capped.tokens.tolist() == whole.tokens.tolist()[:len(capped.tokens)] and len(capped.tokens) <= max_tokens
    assert len(capped.tokens) == 1 + sum(len(text) + 1 for text in kept) and capped.text_bytes == len(capped.tokens) - 1
    if capped.documents < len(documents):  # the next document would not have fitted
        assert len(capped.tokens) + len(documents[capped.documents]) + 1 > max_tokens


def test_tfds_training_split_packed_to_data_tokens(tfds_text, tmp_path):
    options = tfds_options(tfds_text, tmp_path, train_tokens=2000)
    documents = tfds_documents(tfds_text, "train")
    stream = [256] + [token for text in documents for token in [*text, 256]]
    source = data.make_source(tfds_text.name, "train", 16, **options)
    assert stream_of(source) == stream[:1 + len(source) * 16] and 1900 < len(source) * 16 < 2000
    eval_options = tfds_options(tfds_text, tmp_path)
    assert len(data.make_source(tfds_text.name, "eval", 16, **options)) == len(
        data.make_source(tfds_text.name, "eval", 16, **eval_options))  # the eval split is not capped
    assert data.fingerprint(tfds_text.name, **options)["train_tokens"] == 2000
    assert "train_tokens" not in data.fingerprint(tfds_text.name, **eval_options)
    assert len(os.listdir(tmp_path / "tokens")) == 4  # .npy and .json of the capped train split and of eval
    with pytest.raises(UsageError, match="--data_tokens"):
        data.make_source(tfds_text.name, "train", 1, **tfds_options(tfds_text, tmp_path, train_tokens=2))
    with pytest.raises(UsageError, match="--data_tokens"):
        data.make_source("synthetic", "train", 16, train_tokens=2000)


def test_worker_processes_pack_the_stream_packed_in_process(tfds_text, tmp_path):
    """The TFDS training split through SentencePiece, whole and capped within its first and its second
    chunk of documents, ends at the last whole document that fits; two spawned workers give the stream,
    text bytes and documents packed here (capped in the second chunk: the first whole, then a part)."""
    spec = sources.Spec(tfds_text.name, "spm:320", tfds_text.data_dir, tfds_text.text_key, str(tmp_path))
    documents, tokenizer = spec.documents("train"), spec.make_tokenizer()
    ends = np.cumsum([1] + [len(tokenizer.encode(text)) + 1 for text in tfds_documents(tfds_text, "train")])
    assert len(ends) - 1 == len(documents) > packing.CHUNK
    first_chunk, whole = ends[packing.CHUNK], ends[-1]
    for max_tokens in (0, first_chunk // 2, (first_chunk + whole) // 2):
        packed = packing.pack(documents, tokenizer, max_tokens, workers=0)
        assert packed.documents == np.searchsorted(ends, max_tokens or whole, "right") - 1
        assert len(packed.tokens) == ends[packed.documents]
    in_workers = packing.pack(documents, tokenizer, max_tokens, workers=2)
    np.testing.assert_array_equal(in_workers.tokens, packed.tokens)
    assert (in_workers.text_bytes, in_workers.documents) == (packed.text_bytes, packed.documents)


def packed_source(seq_len: int = 8):
    """A small packed source: windows of random documents, and the stream they were cut from."""
    documents = [text for seed in range(8) for text in random_documents(seed)]
    tokens = packing.pack(grain.MapDataset.source(documents), tokenizers.ByteTokenizer()).tokens
    return WindowSource(tokens, seq_len), tokens.tolist()


def test_loader_trains_every_target_of_an_epoch_exactly_once():
    source, stream = packed_source()
    batch_size = 4
    load = data.BatchLoader(source, global_batch_size=batch_size, seed=5, sharding=single_device())
    steps = -(-len(source) // batch_size)
    rows = np.concatenate([host(load(step))["targets"] for step in range(steps)])[: len(source)]
    assert sorted(map(tuple, rows.tolist())) == sorted(tuple(source[i][1:].tolist()) for i in range(len(source)))
    assert collections.Counter(rows.ravel().tolist()) == collections.Counter(stream[1 : 1 + len(source) * 8])


def test_a_resumed_loader_reads_what_the_uninterrupted_one_reads(tfds_text, tmp_path):
    options = tfds_options(tfds_text, tmp_path, tokenizer="spm:320")
    make = lambda: data.BatchLoader(data.make_source(tfds_text.name, "train", 16, **options), global_batch_size=8,
                                    seed=2, sharding=sharded())
    uninterrupted = make()
    batches = [host(uninterrupted(step)) for step in range(6)]
    sources._packed_by_key.cache_clear()  # a restarted process: the packed split comes back from disk
    resumed = make()
    for step in (3, 5):
        for key, value in host(resumed(step)).items():
            np.testing.assert_array_equal(value, batches[step][key])


def test_two_processes_read_disjoint_rows_whose_union_is_the_batch(monkeypatch):
    source, _ = packed_source()
    whole = host(data.BatchLoader(source, global_batch_size=8, seed=0, sharding=single_device())(3))
    monkeypatch.setattr(jax, "make_array_from_process_local_data", lambda sharding, rows, shape: rows)
    halves = [data.BatchLoader(source, global_batch_size=8, seed=0, sharding=fake_sharding(rows))(3)
              for rows in ([slice(0, 2), slice(2, 4)], [slice(4, 6), slice(6, 8)])]
    for key in whole:
        assert [len(half[key]) for half in halves] == [4, 4]
        np.testing.assert_array_equal(np.concatenate([half[key] for half in halves]), whole[key])


def tfds_options(tfds_text, cache_dir, **changes) -> dict:
    return {"data_dir": tfds_text.data_dir, "text_key": tfds_text.text_key, "cache_dir": str(cache_dir), **changes}


def tfds_documents(tfds_text, split: str) -> list[bytes]:
    """The split's texts as TFDS serves them (its stored order), read without scaling.data."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    source = tfds.data_source(tfds_text.name.removeprefix("tfds:"), split=split, data_dir=tfds_text.data_dir)
    return [source[index]["text"] for index in range(len(source))]


@pytest.mark.parametrize("split, tfds_split", [("train", "train"), ("eval", "validation")])
def test_tfds_documents_are_packed_in_their_stored_order(tfds_text, tmp_path, split, tfds_split):
    documents = tfds_documents(tfds_text, tfds_split)
    assert sorted(documents) == sorted(tfds_text.documents[tfds_split])
    source = data.make_source(tfds_text.name, split, 16, **tfds_options(tfds_text, tmp_path))
    stream = [256] + [token for text in documents for token in [*text, 256]]
    assert stream_of(source) == stream[: 1 + len(source) * 16]
    assert data.bytes_per_token(tfds_text.name, split, **tfds_options(tfds_text, tmp_path)) == 1.0


def test_tfds_fingerprint_names_the_dataset_text_key_and_tokenizer(tfds_text, tmp_path):
    fingerprint = data.fingerprint(tfds_text.name, **tfds_options(tfds_text, tmp_path))
    assert fingerprint["dataset"] == "scaling_tiny_text/1.0.0" and fingerprint["text_key"] == "text"
    assert fingerprint["documents"] == {"train": 300, "eval": 60}
    assert fingerprint["tokenizer"]["spec"] == "bytes" and json.loads(json.dumps(fingerprint)) == fingerprint
    assert data.fingerprint(tfds_text.name, **tfds_options(tfds_text, tmp_path, text_key="title")) != fingerprint


def spm_model(cache_dir) -> str:
    """The one SentencePiece model file under `cache_dir`, checking its name: data, data hash, N."""
    (name,) = os.listdir(cache_dir / "tokenizers")
    assert re.fullmatch(r"tfds_scaling_tiny_text-[0-9a-f]{8}-spm320\.model", name)
    return str(cache_dir / "tokenizers" / name)


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def refuse(what: str):
    """A stand-in for a function that must not be called: it raises RuntimeError(what)."""
    def call(*args, **kwargs):
        raise RuntimeError(what)
    return call


def test_spm_is_trained_once_then_loaded_from_the_cache(tfds_text, tmp_path, monkeypatch):
    options = tfds_options(tfds_text, tmp_path, tokenizer="spm:320")
    assert data.vocab_size(tfds_text.name, **options) == 320  # known from the spec, nothing trained yet
    assert not (tmp_path / "tokenizers").exists()
    data.fingerprint(tfds_text.name, **options)
    path = spm_model(tmp_path)
    monkeypatch.setattr(spm_training, "train", refuse("trained again"))
    fingerprint = data.fingerprint(tfds_text.name, **options)["tokenizer"]
    assert fingerprint == {"spec": "spm:320", "model_type": "unigram", "vocab_size": 320, "eod_id": 1,
                           "sha256": sha256_of(path)}
    assert data.make_source(tfds_text.name, "train", 16, **options)[0].max() < 320


def test_spm_training_is_reproducible_and_the_fingerprint_follows_the_file(tfds_text, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    fingerprints = [data.fingerprint(tfds_text.name, **tfds_options(tfds_text, cache_dir, tokenizer="spm:320"))
                    for cache_dir in (first, second)]
    assert fingerprints[0] == fingerprints[1]  # hosts with separate disks train the same model
    other = data.fingerprint(tfds_text.name, **tfds_options(tfds_text, first, tokenizer="spm:340"))["tokenizer"]
    shutil.copyfile(next((first / "tokenizers").glob("*-spm340.model")), spm_model(second))
    changed = data.fingerprint(tfds_text.name, **tfds_options(tfds_text, second, tokenizer="spm:320"))["tokenizer"]
    assert changed["sha256"] == other["sha256"] != fingerprints[0]["tokenizer"]["sha256"]


def test_spm_pieces_spell_the_text_exactly(tfds_text, tmp_path):
    options = tfds_options(tfds_text, tmp_path, tokenizer="spm:320")
    source = data.make_source(tfds_text.name, "eval", 16, **options)
    model = sentencepiece.SentencePieceProcessor(model_file=spm_model(tmp_path))
    documents = tfds_documents(tfds_text, "validation")
    assert all(model.decode(model.encode(text.decode())) == text.decode() for text in documents)
    encoded = [model.encode(text.decode()) + [model.eos_id()] for text in documents]
    stream = [model.eos_id()] + [token for ids in encoded for token in ids]
    assert stream_of(source) == stream[: 1 + len(source) * 16]
    text_bytes = sum(len(text) + 1 for text in documents)
    assert data.bytes_per_token(tfds_text.name, "eval", **options) == text_bytes / (len(stream) - 1) > 1.5


@pytest.mark.parametrize("size", [300, 100_000])
def test_spm_vocabulary_the_sample_cannot_support_is_one_usage_error_line(tfds_text, tmp_path, size):
    with pytest.raises(UsageError) as error:
        data.fingerprint(tfds_text.name, **tfds_options(tfds_text, tmp_path, tokenizer=f"spm:{size}"))
    assert error.value.flag == "--tokenizer" and "\n" not in str(error.value)
    assert "Vocabulary size" in str(error.value) and not (tmp_path / "tokenizers").exists()


def test_tokenised_splits_are_cached_on_disk_and_reused(tfds_text, tmp_path, monkeypatch):
    options = tfds_options(tfds_text, tmp_path, tokenizer="spm:320")
    first = data.make_source(tfds_text.name, "train", 16, **options)
    stems = sorted(name for name in os.listdir(tmp_path / "tokens"))
    assert len(stems) == 2 and re.fullmatch(r"tfds_scaling_tiny_text-train-spm_320-[0-9a-f]{16}\.json", stems[0])
    sources._packed_by_key.cache_clear()
    monkeypatch.setattr(packing, "pack", refuse("tokenised again"))
    again = data.make_source(tfds_text.name, "train", 16, **options)
    np.testing.assert_array_equal(again[len(again) - 1], first[len(first) - 1])
    with pytest.raises(RuntimeError, match="tokenised again"):  # another tokenizer: another file
        data.make_source(tfds_text.name, "train", 16, **{**options, "tokenizer": "bytes"})


def test_tfds_dataset_not_prepared_says_how_to_prepare_it(tfds_text, tmp_path):
    with pytest.raises(UsageError) as error:
        data.make_source(tfds_text.name, "train", 16, data_dir=str(tmp_path))
    assert error.value.flag == "--data" and "\n" not in str(error.value)
    assert f"tfds build scaling_tiny_text --data_dir {tmp_path}" in str(error.value)


def test_tfds_dataset_prepared_as_tfrecord_says_how_to_prepare_it_for_random_access(tfds_text, tmp_path):
    """A copy of the prepared dataset recorded as TFRecord in its dataset_info.json (writing TFRecord
    files takes TensorFlow, which the tests do not install; the check reads the recorded format)."""
    shutil.copytree(os.path.join(tfds_text.data_dir, "scaling_tiny_text"), tmp_path / "scaling_tiny_text")
    info = next((tmp_path / "scaling_tiny_text").glob("*/dataset_info.json"))
    info.write_text(json.dumps({**json.loads(info.read_text()), "fileFormat": "tfrecord"}))
    with pytest.raises(UsageError) as error:
        data.make_source(tfds_text.name, "train", 16, data_dir=str(tmp_path))
    assert error.value.flag == "--data" and "\n" not in str(error.value) and "without random access" in str(error.value)
    assert f"tfds build scaling_tiny_text --data_dir {tmp_path} --file_format array_record" in str(error.value)


@pytest.mark.parametrize("text_key, named", [("body", "id, text, title"), ("id", "not text")])
def test_tfds_text_key_must_be_a_text_feature(tfds_text, tmp_path, text_key, named):
    with pytest.raises(UsageError) as error:
        data.make_source(tfds_text.name, "train", 16, **tfds_options(tfds_text, tmp_path, text_key=text_key))
    assert error.value.flag == "--text_key" and named in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name, data_dir, flag", [
    ("tfds:scaling_no_such_dataset", None, "--data"),
    ("tfds:scaling_tiny_text", "/no/such/directory", "--data_dir"),
])
def test_unknown_tfds_name_or_missing_data_dir_is_one_usage_error_line(tfds_text, name, data_dir, flag):
    with pytest.raises(UsageError) as error:
        data.fingerprint(name, data_dir=data_dir or tfds_text.data_dir)
    assert error.value.flag == flag and "\n" not in str(error.value)


def test_tfds_eval_is_the_validation_split_else_test():
    builder = lambda *splits: types.SimpleNamespace(info=types.SimpleNamespace(splits=dict.fromkeys(splits)))
    assert tfds_text_module._split(builder("train", "validation", "test"), "x", "eval") == "validation"
    assert tfds_text_module._split(builder("train", "test"), "x", "eval") == "test"
    with pytest.raises(UsageError):
        tfds_text_module._split(builder("train"), "x", "eval")
