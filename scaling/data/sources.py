"""Maps a `--data` name and `--tokenizer` to records, vocabulary size, fingerprint and bytes per token.

Text data (pystdlib, tfds:NAME) is documents, tokenised and packed (packing.py) into windows; synthetic
data is token records already and takes no tokenizer. `cache_dir` (the sweep's workdir) keeps trained
tokenizers and tokenised splits:

    <cache_dir>/tokenizers/<data>-<data hash>-spm<N>.model
    <cache_dir>/tokens/<data>-<split>-<tokenizer>-<key>.npy and .json (text bytes, documents, tokens)

where <data> is the name made file-name safe, <data hash> 8 hex digits of the data's fingerprint and
<key> 16 hex digits of the hash of the data and tokenizer fingerprints, the split and the packing.
Without a cache_dir the bytes tokenizer packs in memory (once per process); spm:N needs one.
"""
import dataclasses
import functools
import os

from scaling.config import UsageError
from scaling.data import cache, packing, pystdlib, synthetic, tfds_text, tokenizers
from scaling.data.windows import WindowSource

SPLITS = ("train", "eval")
_VALID = "choose pystdlib, synthetic or tfds:NAME (e.g. tfds:lm1b)"


def _module(name: str):
    """The module implementing text data `name`, None for synthetic, or UsageError naming the choices."""
    if name == "pystdlib":
        return pystdlib
    if name == "synthetic":
        return None
    if name.startswith("tfds:") and len(name) > len("tfds:"):
        return tfds_text
    raise UsageError("--data", f"unknown data {name!r}; {_VALID}")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What determines a text source's records: data name, tokenizer spec, TFDS options and the cache."""

    name: str
    tokenizer: str
    data_dir: str | None
    text_key: str
    cache_dir: str | None
    train_tokens: int = 0  # the training split packed to at most this many tokens (0: all of it)

    @property
    def module(self):
        return _module(self.name)

    def data_fingerprint(self) -> dict:
        return self.module.fingerprint(self.name, self.data_dir, self.text_key)

    def documents(self, split: str):
        """The split's documents as a grain MapDataset of valid UTF-8 bytes."""
        return self.module.documents(self.name, split, self.data_dir, self.text_key).map(valid_utf8)

    def make_tokenizer(self):
        """The tokenizer, an spm model trained on (and named after) this data."""
        data_key = f"{cache.safe(self.name)}-{cache.key(self.data_fingerprint())[:8]}"
        return tokenizers.make_tokenizer(self.tokenizer, cache_dir=self.cache_dir, data_key=data_key,
                                         training_documents=lambda: self.documents("train"))


def valid_utf8(text: bytes) -> bytes:
    """`text` with undecodable bytes replaced by U+FFFD, so every tokenizer sees, and bits per byte
    counts, the same text."""
    return text.decode("utf-8", errors="replace").encode()


def _spec(name: str, tokenizer: str, data_dir: str | None, text_key: str, cache_dir: str | None,
          train_tokens: int) -> Spec | None:
    """The Spec of text data (None for synthetic), after checking the name and tokenizer spec."""
    module = _module(name)
    tokenizers.check_spec(tokenizer)
    if module is None:
        if tokenizer != "bytes":
            raise UsageError("--tokenizer", "synthetic data is token ids already; drop --tokenizer")
        if train_tokens:
            raise UsageError("--data_tokens", "synthetic data is generated, not packed; drop --data_tokens")
        return None
    return Spec(name, tokenizer, data_dir, text_key, cache_dir, train_tokens)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@functools.lru_cache(maxsize=None)
def _packed_by_key(spec: Spec, split: str, max_tokens: int, key: str) -> packing.Packed:
    """Packs (or loads) a split once per process and `key`, the hash of everything its stream depends on."""
    stem = None
    if spec.cache_dir is not None:
        file_name = f"{cache.safe(spec.name)}-{split}-{cache.safe(spec.tokenizer)}-{key}"
        stem = os.path.join(spec.cache_dir, "tokens", file_name)
    return packing.load_or_pack(spec.documents(split), spec.make_tokenizer(), stem, max_tokens)


def _packed(spec: Spec, split: str) -> packing.Packed:
    """The split packed (the training split to at most spec.train_tokens), or UsageError if that holds no
    document."""
    max_tokens = spec.train_tokens if split == "train" else 0
    description = {"data": spec.data_fingerprint(), "tokenizer": spec.make_tokenizer().fingerprint,
                   "split": split, "packing": packing.PACKING, **({"max_tokens": max_tokens} if max_tokens else {})}
    packed = _packed_by_key(spec, split, max_tokens, cache.key(description))
    if packed.documents == 0 and max_tokens:
        raise UsageError("--data_tokens", f"{max_tokens} tokens hold not even the first document of {spec.name}; "
                                          "raise it")
    if packed.documents == 0:
        raise UsageError("--data", f"{spec.name} has no {split} documents; choose another dataset")
    return packed


def make_source(name: str, split: str, seq_len: int, tokenizer: str = "bytes", data_dir: str | None = None,
                text_key: str = "text", cache_dir: str | None = None, train_tokens: int = 0):
    """A grain random-access source of np.int32 records of length seq_len + 1 ("train" or "eval" split).

    Inputs are record[:-1] and targets record[1:]. Text data: windows of the packed split (packing.py).
    `data_dir` and `text_key` apply to tfds:NAME (text_key: the example feature holding the text).
    """
    spec = _spec(name, tokenizer, data_dir, text_key, cache_dir, train_tokens)
    _check_split(split)
    if spec is None:
        source = synthetic.make_source(name, split, seq_len)
    else:
        source = WindowSource(_packed(spec, split).tokens, seq_len)
    if len(source) == 0:
        raise UsageError("--seq_len", f"{seq_len} leaves no {split} record in {name}; lower it")
    return source


def vocab_size(name: str, tokenizer: str = "bytes", data_dir: str | None = None, text_key: str = "text",
               cache_dir: str | None = None, train_tokens: int = 0) -> int:
    """Number of distinct token ids: 256 for synthetic, 257 for bytes (with the end-of-document id),
    N for spm:N (SentencePiece trains exactly N pieces)."""
    spec = _spec(name, tokenizer, data_dir, text_key, cache_dir, train_tokens)
    if spec is None:
        return synthetic.VOCAB
    return tokenizers.check_spec(tokenizer) or tokenizers.ByteTokenizer.vocab_size


def fingerprint(name: str, tokenizer: str = "bytes", data_dir: str | None = None, text_key: str = "text",
                cache_dir: str | None = None, train_tokens: int = 0) -> dict:
    """A JSON-serialisable description of the data, recorded in run configs: the data's own fingerprint,
    plus for text data the tokenizer's (spm: the sha256 of its model) and the packing."""
    spec = _spec(name, tokenizer, data_dir, text_key, cache_dir, train_tokens)
    if spec is None:
        return synthetic.fingerprint(name)
    return {**spec.data_fingerprint(), "tokenizer": dict(spec.make_tokenizer().fingerprint), "packing": packing.PACKING,
            **({"train_tokens": train_tokens} if train_tokens else {})}


def tokenizer(name: str, tokenizer: str = "bytes", data_dir: str | None = None, text_key: str = "text",
              cache_dir: str | None = None, train_tokens: int = 0):
    """The tokenizer of text data (None for synthetic), to encode prompts and decode samples."""
    spec = _spec(name, tokenizer, data_dir, text_key, cache_dir, train_tokens)
    return None if spec is None else spec.make_tokenizer()


def bytes_per_token(name: str, split: str, tokenizer: str = "bytes", data_dir: str | None = None,
                    text_key: str = "text", cache_dir: str | None = None, train_tokens: int = 0) -> float | None:
    """UTF-8 text bytes per target token over the whole split (an eod counts as one byte), None for
    synthetic data (no text). Bits per byte = mean token loss in nats / ln 2 / bytes_per_token."""
    spec = _spec(name, tokenizer, data_dir, text_key, cache_dir, train_tokens)
    _check_split(split)
    return None if spec is None else _packed(spec, split).bytes_per_token
