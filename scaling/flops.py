"""Parameter counts and training FLOPs per token, one convention for every architecture.

CONVENTION (recorded with every result as `flops_convention`):
  training FLOPs per token = 3 x forward (backward = 2 x forward), where forward =
    2 x (matmul parameters a token passes through: attention and MLP projections, output head)
  + 4 x n_layers x seq_len x d_attn  (q k^T and attention-weights x v over the FULL T x T square,
                                      Chinchilla's convention; the compiled step skips the masked
                                      blocks above the diagonal: scaling/nn/attention.py)
  The embedding lookup, norms, softmax, RoPE and other elementwise work are not counted.
Non-embedding parameters exclude the input embedding table and the output head; active parameters
are those a single token uses (they differ from the total only for mixtures of experts).
"""
import dataclasses

CONVENTION = "6*matmul_params + 12*L*T*d_attn (full TxT) per token; embedding lookup & elementwise not counted"


@dataclasses.dataclass(frozen=True)
class Counts:
    """Sizes and per-token training cost of one model shape."""

    params: int
    nonembed_params: int
    active_params: int
    flops_per_token: float

    @property
    def active_nonembed_params(self) -> int:
        """Non-embedding parameters a single token uses."""
        return self.nonembed_params - (self.params - self.active_params)
