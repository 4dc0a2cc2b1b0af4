"""Generated tokens with learnable structure, for tests: walks of one fixed sparse Markov chain."""
import numpy as np

VOCAB = 256
BRANCHES = 4  # successors per token: a learned model reaches log(4) nats from log(256)
RECORDS = 2**20
TABLE_SEED = 0
_SPLIT_IDS = {"train": 0, "eval": 1}


def successor_table() -> np.ndarray:
    """[VOCAB, BRANCHES] successors of each token, the same in every process."""
    return np.random.default_rng(TABLE_SEED).integers(0, VOCAB, size=(VOCAB, BRANCHES))


class MarkovSource:
    """RECORDS walks of seq_len + 1 tokens; record i draws from default_rng([split_id, i])."""

    def __init__(self, split: str, seq_len: int):
        self._split_id = _SPLIT_IDS[split]
        self._length = seq_len + 1
        self._successors = successor_table().tolist()

    def __len__(self) -> int:
        return RECORDS

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < RECORDS:
            raise IndexError(f"record {index} out of range [0, {RECORDS})")
        rng = np.random.default_rng([self._split_id, index])
        token = int(rng.integers(VOCAB))
        walk = [token]
        for branch in rng.integers(BRANCHES, size=self._length - 1).tolist():
            token = self._successors[token][branch]
            walk.append(token)
        return np.array(walk, np.int32)

    def __repr__(self) -> str:
        return f"MarkovSource(split_id={self._split_id}, length={self._length})"


def make_source(name: str, split: str, seq_len: int) -> MarkovSource:
    """The synthetic source for `split`."""
    del name
    return MarkovSource(split, seq_len)


def fingerprint(name: str) -> dict:
    """Everything that determines the generated tokens."""
    return {"name": name, "records": RECORDS, "branches": BRANCHES, "table_seed": TABLE_SEED}
