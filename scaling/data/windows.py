"""Random access to fixed-length windows of one token stream (a packed split: see packing.py)."""
import numpy as np


class WindowSource:
    """Records of seq_len + 1 tokens at stride seq_len, so neighbours share one boundary token: the
    last target of record i is the first input of record i + 1, and every token but the stream's first
    is a target of exactly one record. Only the final partial window is dropped.

    `tokens` may be memory-mapped; a record is read (and copied to int32) on access.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self._tokens = tokens
        self._seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (len(self._tokens) - 1) // self._seq_len)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range [0, {len(self)})")
        start = index * self._seq_len
        return self._tokens[start : start + self._seq_len + 1].astype(np.int32)

    def __repr__(self) -> str:
        return f"WindowSource(tokens={len(self._tokens)}, seq_len={self._seq_len})"
