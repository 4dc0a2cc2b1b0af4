"""The large-scale path: the documents of a prepared TensorFlow Datasets text dataset, read by random
access from its ArrayRecord files (local or in a bucket), never downloaded or prepared here."""
import functools
import os
import threading

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from scaling.config import UsageError

_EVAL_SPLITS = ("validation", "test")
# A file's reader fetches this much at a time: the 256 documents packing reads together (~0.5 MB of C4)
# in one or two requests from a bucket, and a document read alone in one.
READ_AHEAD = "readahead_buffer_size:1M"


def _tfds():
    """tensorflow_datasets, imported only when a tfds name is used (it is an optional extra)."""
    try:
        import tensorflow_datasets  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UsageError("--data", "install the [data] extra: pip install -e '.[data]'") from None
    return tensorflow_datasets


def _dataset_name(name: str) -> str:
    return name.removeprefix("tfds:")


def _build_command(name: str, data_dir: str | None) -> str:
    return f"tfds build {name} --data_dir {data_dir or 'DIR'} --file_format array_record"


@functools.lru_cache(maxsize=None)
def _builder(name: str, data_dir: str | None):
    """The prepared dataset's builder; UsageError for a missing data_dir, an unknown or unprepared dataset."""
    tfds = _tfds()
    if data_dir is not None and "://" not in data_dir and not os.path.isdir(data_dir):
        raise UsageError("--data_dir", f"{data_dir} is not a directory; give the one holding prepared TFDS datasets")
    where = data_dir or tfds.core.constants.DATA_DIR
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as error:  # DatasetNotFoundError, or an unknown config or version
        raise UsageError("--data", f"tfds:{name}: {str(error).splitlines()[0]} (not a registered TFDS name, nor "
                                   f"prepared in {where}); check the name against the TFDS catalog") from None
    if not builder.is_prepared():
        raise UsageError("--data", f"tfds:{name} is not prepared in {where}; prepare it with: "
                                   f"{_build_command(name, data_dir)}")
    return builder


def _split(builder, name: str, split: str) -> str:
    """The TFDS split behind "train" and "eval" (validation, or test where there is none)."""
    candidates = ("train",) if split == "train" else _EVAL_SPLITS
    for candidate in candidates:
        if candidate in builder.info.splits:
            return candidate
    raise UsageError("--data", f"tfds:{name} has no {' or '.join(candidates)} split; choose another dataset")


def _check_text_key(builder, name: str, text_key: str) -> None:
    """UsageError unless `text_key` is a text feature of the dataset, naming the features it has."""
    features = builder.info.features
    if text_key not in features:
        raise UsageError("--text_key", f"tfds:{name} has no feature {text_key!r}; its features are "
                                       f"{', '.join(sorted(features))}")
    if not isinstance(features[text_key], _tfds().features.Text):
        raise UsageError("--text_key", f"feature {text_key!r} of tfds:{name} is {features[text_key]!r}, not text; "
                                       "choose a text feature")


def documents(name: str, split: str, data_dir: str | None, text_key: str) -> grain.MapDataset:
    """The `text_key` feature (UTF-8 bytes) of each example of the split, in the dataset's order."""
    name = _dataset_name(name)
    builder = _builder(name, data_dir)
    _check_text_key(builder, name, text_key)
    if builder.info.file_format != _tfds().core.file_adapters.FileFormat.ARRAY_RECORD:  # TFRecord: no random access
        raise UsageError("--data", f"tfds:{name} is prepared without random access; re-prepare it with: "
                                   f"{_build_command(name, data_dir)}")
    instructions = builder.info.splits[_split(builder, name, split)].file_instructions
    return grain.MapDataset.source(_Texts(instructions, builder.info.features, text_key))


class _Texts:
    """The `text_key` feature of a split's examples, read from its ArrayRecord files in the order
    tfds.data_source gives them, and decoded by the dataset's features as it decodes them.

    Packing reads the documents in order, CHUNK at a time (`_getitems`, grain's batched-read protocol),
    so each file's reader reads ahead (READ_AHEAD). tfds.data_source opens ArrayRecord for random access,
    reading none ahead, and from a bucket (gs://) that fetched every document with its own request: 301
    requests for the tests' 300 training documents on a local GCS server (tests/gcs_server.py).
    """

    def __init__(self, instructions, features, text_key: str):
        self._files = [(instruction.filename, instruction.skip) for instruction in instructions]
        self._ends = np.cumsum([instruction.take for instruction in instructions])
        self._features, self._text_key = features, text_key
        self._readers, self._lock = {}, threading.Lock()

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, index: int) -> bytes:
        return self._getitems([index])[0]

    def _getitems(self, indices) -> list:
        indices = np.asarray(indices, np.int64)
        files = np.searchsorted(self._ends, indices, side="right")
        texts = [b""] * len(indices)
        for file in np.unique(files):
            slots = np.flatnonzero(files == file)
            first = self._ends[file - 1] if file else 0
            records = self._read(file, (indices[slots] - first + self._files[file][1]).tolist())
            for slot, record in zip(slots, records):
                texts[slot] = self._features.deserialize_example_np(record)[self._text_key]
        return texts

    def _read(self, file: int, positions: list[int]) -> list[bytes]:
        with self._lock:  # one reader per file and process; decoding, the larger part, runs unlocked
            if file not in self._readers:
                self._readers[file] = ArrayRecordReader(self._files[file][0], READ_AHEAD)
            return self._readers[file].read(positions)

    def __getstate__(self) -> dict:  # readers are opened in each process (packing's workers)
        return {**self.__dict__, "_readers": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def fingerprint(name: str, data_dir: str | None, text_key: str) -> dict:
    """The dataset's full name (name/config/version), its text feature and its documents per split.

    `data_dir` is where the data lies, not what it is, so it is left out.
    """
    dataset = _dataset_name(name)
    builder = _builder(dataset, data_dir)
    _check_text_key(builder, dataset, text_key)
    counts = {split: builder.info.splits[_split(builder, dataset, split)].num_examples for split in ("train", "eval")}
    return {"name": name, "dataset": builder.info.full_name, "text_key": text_key, "documents": counts}
