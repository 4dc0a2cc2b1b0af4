"""Frozen configs for a model, a training run and a device mesh, with user-facing validation.

Every check raises `UsageError(flag, fix)`; entry points turn it into one line and exit status 2.
"""
import dataclasses
import math


class UsageError(ValueError):
    """Bad user input: names the command-line flag at fault and how to fix it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of one model. Architecture-specific options carry defaults."""

    arch: str = "gpt"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 384
    seq_len: int = 256
    dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"
    init_std: float = 0.02
    rope_base: float = 10000.0
    # Switch Transformer MoE FFN (REFERENCE.md section 3); used by architectures with experts.
    num_experts: int = 8
    capacity_factor: float = 1.25
    eval_capacity_factor: float = 2.0
    moe_every: int = 2
    group_size: int = 256
    router_z_loss: float = 0.0
    # TransNormerLLM / Lightning Attention (REFERENCE.md section 5).
    chunk_size: int = 64
    lrpe: bool = False

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def min_layers(self) -> int:
        """Fewest blocks this architecture needs: a Switch model's first MoE FFN is in block moe_every."""
        return self.moe_every if self.arch == "switch" else 1

    def validate(self) -> "ModelConfig":
        for flag in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len"):
            if getattr(self, flag) < 1:
                raise UsageError(f"--{flag}", "must be a positive integer")
        if self.d_model % self.n_heads:
            raise UsageError("--n_heads", f"must divide --d_model={self.d_model}")
        if self.d_head % 2:
            raise UsageError("--n_heads", "d_model / n_heads must be even (RoPE and LRPE rotate channel pairs)")
        if self.dtype not in DTYPES:
            raise UsageError("--dtype", f"choose one of {', '.join(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise UsageError("--remat", f"choose one of {', '.join(REMAT_POLICIES)}")
        if self.num_experts < 1:
            raise UsageError("--num_experts", "must be a positive integer")
        if self.capacity_factor <= 0:
            raise UsageError("--capacity_factor", "must be positive (e.g. 1.25)")
        if self.eval_capacity_factor <= 0:
            raise UsageError("--eval_capacity_factor", "must be positive (e.g. 2.0)")
        if self.moe_every < 1:
            raise UsageError("--moe_every", "must be a positive integer (1: every block, 2: every other)")
        if self.min_layers > self.n_layers:
            raise UsageError("--moe_every", f"must be <= --n_layers={self.n_layers}, or no block gets experts")
        if self.group_size < 1:
            raise UsageError("--group_size", "must be a positive integer")
        if self.router_z_loss < 0:
            raise UsageError("--router_z_loss", "must be >= 0 (ST-MoE uses 1e-3)")
        if self.chunk_size < 1 or self.chunk_size & (self.chunk_size - 1):
            raise UsageError("--chunk_size", "must be a power of two (e.g. 64)")
        return self


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and bookkeeping of one run. `tokens` fixes the number of steps."""

    tokens: int = 1_000_000
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    seed: int = 0
    data: str = "pystdlib"
    eval_every: int = 0
    eval_batches: int = 4
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2

    def steps(self, seq_len: int) -> int:
        return self.tokens // (self.batch_size * seq_len)

    def validate(self, seq_len: int) -> "TrainConfig":
        if self.batch_size < 1:
            raise UsageError("--batch_size", "must be a positive integer")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UsageError("--learning_rate", "must be a positive number")
        if self.steps(seq_len) < 1:
            raise UsageError(
                "--tokens",
                f"{self.tokens} tokens is less than one batch ({self.batch_size} x {seq_len}); raise it",
            )
        return self


MESH_AXES = ("data", "model", "expert")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ('data', 'model', 'expert') mesh; one entry may be -1 to fill the devices."""

    data: int = -1
    model: int = 1
    expert: int = 1

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """Parses 'data=-1,model=2,expert=1' (missing axes keep their defaults)."""
        sizes = {}
        for item in filter(None, text.replace(" ", "").split(",")):
            name, _, value = item.partition("=")
            if name not in MESH_AXES or not value.lstrip("-").isdigit():
                raise UsageError("--mesh", f"bad entry {item!r}; write e.g. data=-1,model=2,expert=1")
            sizes[name] = int(value)
        return cls(**sizes)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Returns concrete (data, model, expert) sizes whose product is `num_devices`."""
        sizes = [self.data, self.model, self.expert]
        if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise UsageError("--mesh", "sizes must be positive, with at most one -1 to fill")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise UsageError("--mesh", f"{known} does not divide the {num_devices} devices")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise UsageError(
                "--mesh", f"product {math.prod(sizes)} != {num_devices} devices; use -1 on one axis to fill"
            )
        return tuple(sizes)
