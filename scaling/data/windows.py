"""Random access to fixed-length windows of one token stream."""
import numpy as np


class WindowSource:
    """Records of seq_len + 1 tokens at stride seq_len, so neighbours share one boundary token."""

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
