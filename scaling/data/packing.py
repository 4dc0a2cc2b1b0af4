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

import numpy as np

from scaling.data import cache

PACKING = "eod, doc_0, eod, doc_1, ..., eod; windows of seq_len + 1 tokens at stride seq_len"


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


def pack(documents, tokenizer, max_tokens: int = 0) -> Packed:
    """Tokenises `documents` (a grain MapDataset of UTF-8 bytes), in order, through grain's threaded reads.

    `max_tokens` > 0 keeps the documents, in order, up to the first whose tokens would take the stream
    past that many, written into one array of that size: a corpus larger than memory (c4) packed to
    what its runs read. 0 keeps every document, the stream built in memory once.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    encode = lambda text: (np.append(tokenizer.encode(text), tokenizer.eod_id).astype(dtype), len(text) + 1)
    stream = _Stream(np.array([tokenizer.eod_id], dtype), max_tokens)
    for ids, size in documents.map(encode).to_iter_dataset():
        if not stream.add(ids, size):
            break
    return Packed(stream.tokens(), stream.text_bytes, stream.documents)


class _Stream:
    """The token stream, from its leading eod, grown a document at a time: in one array of `capacity`
    tokens (a document that would overflow it is refused), or, with capacity 0, in a list joined at the end."""

    def __init__(self, start: np.ndarray, capacity: int):
        self.pieces, self.length, self.text_bytes, self.documents = [start], len(start), 0, 0
        self.array = None
        if capacity:
            self.array = np.empty(capacity, start.dtype)
            self.array[:len(start)] = start

    def add(self, ids: np.ndarray, text_bytes: int) -> bool:
        if self.array is None:
            self.pieces.append(ids)
        elif self.length + len(ids) <= len(self.array):
            self.array[self.length:self.length + len(ids)] = ids
        else:
            return False
        self.length += len(ids)
        self.text_bytes += text_bytes
        self.documents += 1
        return True

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
