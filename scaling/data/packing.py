"""Packing: a split's documents tokenised and joined by the end-of-document token into one stream.

The stream is eod, doc_0, eod, doc_1, eod, ..., doc_n, eod; WindowSource (windows.py) cuts it into
records of seq_len + 1 tokens at stride seq_len, so every token after the leading eod is a target
exactly once per epoch (a document's first token is predicted from the eod before it), nothing is
padding, and only the final partial window is dropped.

Bits per byte. Each target token covers UTF-8 bytes of text; an eod counts as one byte (the separator
character between documents, which the model must predict like any other). The bits per byte of a
set of target tokens is (sum of their losses in nats) / ln 2 / (bytes they cover); over a whole split
that is mean_loss * tokens / (ln 2 * bytes) = mean_loss / ln 2 / bytes_per_token. With the bytes
tokenizer every token covers one byte, so bits per byte is the loss in bits per token.
"""
from typing import NamedTuple

import grain
import numpy as np

from scaling.data import cache, parallel

PACKING = "eod, doc_0, eod, doc_1, ..., eod; windows of seq_len + 1 tokens at stride seq_len"
CHUNK = 256  # documents tokenised together: one batched read, one task for a worker
# Workers take ~4 s to start. Two on 2 cores packed 60,000 C4-like documents (~500 tokens each) at
# 1.3-1.6M tokens/s, their start included, against 0.9M in one process (benchmarks/packing.py):
# they pay from ~20,000 documents.
PARALLEL_MIN_DOCUMENTS = 20_000


class Packed(NamedTuple):
    """A split's token stream (uint16 where the vocabulary allows), the text bytes its targets cover
    (eod as one byte) and its document count."""

    tokens: np.ndarray
    text_bytes: int
    documents: int

    @property
    def bytes_per_token(self) -> float:
        """Text bytes per target token over the whole split (targets: every token but the first)."""
        return self.text_bytes / (len(self.tokens) - 1)


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.int32


class Encoded(NamedTuple):
    """A run of consecutive documents tokenised: their ids (each followed by eod) joined, and each
    document's token count and text bytes (eod as one byte)."""

    ids: np.ndarray
    lengths: np.ndarray
    text_bytes: np.ndarray


class _EncodeChunk:
    """Reads and tokenises chunk i of `documents`: documents i * CHUNK up to (i + 1) * CHUNK.

    The chunk is read by grain's batched read (`_getitems`, which MapDataset.batch calls once grain's
    batch pushdown is on): ArrayRecord then reads the records in one call, ~10x less time per record
    than one at a time (26-30 against 226-351 us on a 2-core AMD EPYC; TFDS's decoding adds ~100 us).
    """

    def __init__(self, documents, tokenizer):
        self.documents, self.tokenizer = documents, tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)

    def __call__(self, chunk: int) -> Encoded:
        texts = self.documents._getitems(range(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self.documents))))
        ids = [np.append(self.tokenizer.encode(text), self.tokenizer.eod_id).astype(self.dtype) for text in texts]
        return Encoded(np.concatenate(ids), np.array([len(piece) for piece in ids], np.int64),
                       np.array([len(text) + 1 for text in texts], np.int64))


def pack(documents, tokenizer, max_tokens: int = 0, workers: int | None = None) -> Packed:
    """Tokenises `documents` (a grain MapDataset of UTF-8 bytes), in order, CHUNK documents at a time.

    `max_tokens` > 0 keeps the documents, in order, up to the first whose tokens would take the stream
    past that many, written into one array of that size: a corpus larger than memory (c4) packed to
    what its runs read. 0 keeps every document, the stream built in memory once.

    `workers` > 0 tokenises in that many processes (parallel.py), None in one per core where there
    are at least PARALLEL_MIN_DOCUMENTS documents; the stream is the same either way.
    """
    encode = _EncodeChunk(documents, tokenizer)
    chunks = grain.MapDataset.range(-(-len(documents) // CHUNK)).map(encode)
    if workers is None:
        workers = parallel.cores() if len(documents) >= PARALLEL_MIN_DOCUMENTS else 0
    stream = _Stream(np.array([tokenizer.eod_id], encode.dtype), max_tokens)
    with parallel.ordered_map(chunks, workers) as encoded:
        for chunk in encoded:
            if not stream.add(chunk):
                break
    return Packed(stream.tokens(), stream.text_bytes, stream.documents)


class _Stream:
    """The token stream, from its leading eod, grown a chunk of documents at a time: in one array of
    `capacity` tokens (whole documents up to the first that would overflow it), or, with capacity 0, in
    a list joined at the end."""

    def __init__(self, start: np.ndarray, capacity: int):
        self.pieces, self.length, self.text_bytes, self.documents = [start], len(start), 0, 0
        self.array = None
        if capacity:
            self.array = np.empty(capacity, start.dtype)
            self.array[:len(start)] = start

    def add(self, chunk: Encoded) -> bool:
        """Appends the chunk's documents that fit; False if one did not."""
        ends = np.cumsum(chunk.lengths)
        fit = len(ends) if self.array is None else int(np.searchsorted(ends, len(self.array) - self.length, "right"))
        size = int(ends[fit - 1]) if fit else 0
        if self.array is None:
            self.pieces.append(chunk.ids)
        else:
            self.array[self.length:self.length + size] = chunk.ids[:size]
        self.length += size
        self.text_bytes += int(chunk.text_bytes[:fit].sum())
        self.documents += fit
        return fit == len(ends)

    def tokens(self) -> np.ndarray:
        return np.concatenate(self.pieces) if self.array is None else self.array[:self.length]


def load_or_pack(documents, tokenizer, stem: str | None, max_tokens: int = 0) -> Packed:
    """The packed split cached at `stem` (.npy + .json, memory-mapped), else packed (`pack`) and saved
    there unless it holds no document; `stem` None packs in memory only."""
    loaded = None if stem is None else cache.load_tokens(stem)
    if loaded is not None:
        tokens, meta = loaded
        return Packed(tokens, meta["text_bytes"], meta["documents"])
    packed = pack(documents, tokenizer, max_tokens)
    if stem is not None and packed.documents:  # an empty split is refused (sources.py), not kept
        cache.save_tokens(stem, packed.tokens, {"text_bytes": packed.text_bytes, "documents": packed.documents,
                                                "tokens": len(packed.tokens), "tokenizer": tokenizer.fingerprint})
    return packed
