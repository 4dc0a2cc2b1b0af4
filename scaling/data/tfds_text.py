"""The large-scale path: the documents of a prepared TensorFlow Datasets text dataset, read by random
access (tfds.data_source over ArrayRecord files), never downloaded or prepared here."""
import functools
import os

import grain

from scaling.config import UsageError

_EVAL_SPLITS = ("validation", "test")


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
    try:
        source = _tfds().data_source(name, split=_split(builder, name, split), data_dir=data_dir, download=False)
    except NotImplementedError:  # prepared as TFRecord, which has no random access
        raise UsageError("--data", f"tfds:{name} is prepared without random access; re-prepare it with: "
                                   f"{_build_command(name, data_dir)}") from None
    return grain.MapDataset.source(_Texts(source, text_key))


class _Texts:
    """The `text_key` feature of a TFDS data source's examples. Where grain reads several at once (a
    batch), ArrayRecord reads them in one call (grain's batched-read protocol, `_getitems`)."""

    def __init__(self, source, text_key: str):
        self._source, self._text_key = source, text_key

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index][self._text_key]

    def _getitems(self, indices) -> list:
        return [example[self._text_key] for example in self._source.__getitems__(indices)]

    def __repr__(self) -> str:
        return f"_Texts({self._source!r}, {self._text_key!r})"


def fingerprint(name: str, data_dir: str | None, text_key: str) -> dict:
    """The dataset's full name (name/config/version), its text feature and its documents per split.

    `data_dir` is where the data lies, not what it is, so it is left out.
    """
    dataset = _dataset_name(name)
    builder = _builder(dataset, data_dir)
    _check_text_key(builder, dataset, text_key)
    counts = {split: builder.info.splits[_split(builder, dataset, split)].num_examples for split in ("train", "eval")}
    return {"name": name, "dataset": builder.info.full_name, "text_key": text_key, "documents": counts}
