"""Frozen configs for a model, a training run and a device mesh, with user-facing validation.

Every option is declared once, as a dataclass field made by `option` (default, help text, choices);
experiments/cli.py turns the fields into command-line flags. An architecture's own options live in
an `ArchOptions` subclass beside its model (scaling/models/). Every check raises
`UsageError(flag, fix)`; entry points turn it into one line and exit status 2.
"""
import dataclasses
import math
from typing import ClassVar


class UsageError(ValueError):
    """Bad user input: names the command-line flag at fault and how to fix it."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def option(default, help: str, choices: tuple[str, ...] | None = None):  # noqa: A002 (absl's word)
    """A config field with its command-line help (and, for strings, its allowed values)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def option_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config class that are command-line options."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def check_choice(value: str, field: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"--{field}", f"choose one of {', '.join(choices)}")


def check_positive(config, *names: str) -> None:
    """UsageError naming the first of `names` whose value is not a positive number."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name}", "must be positive")


@dataclasses.dataclass(frozen=True)
class ArchOptions:
    """Options of one architecture. Each architecture declares a subclass beside its model (with
    `option` fields, each a command-line flag); this base has none.

    `min_layers` is the fewest blocks the options allow (the size family honours it) and
    `depth_flag` names the option that sets it, for error messages. `looks_ahead` is True where the
    training pass routes a token by later tokens of its sequence (expert-choice top-k), which sampling
    cannot: evaluation then also reports the loss of the causal pass sampling takes (eval_causal_loss).
    """

    depth_flag: ClassVar[str] = "--n_layers"
    looks_ahead: ClassVar[bool] = False

    def validate(self, cfg: "ModelConfig") -> None:
        """UsageError on bad options; `cfg` is the whole model (its shape is already valid)."""

    def min_layers(self) -> int:
        return 1


DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("auto", "none", "dots", "full")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of one model; `options` holds its architecture's own fields."""

    arch: str = option("gpt", "Architecture name (see scaling/models/registry.py).")
    vocab_size: int = option(256, "Vocabulary size (default: the data source's).")
    d_model: int = option(128, "Model width (instead of --size).")
    n_layers: int = option(2, "Number of blocks (instead of --size).")
    n_heads: int = option(2, "Attention heads (instead of --size).")
    d_ff: int = option(384, "MLP hidden width (default with --d_model: 8/3 d_model rounded up to 64).")
    seq_len: int = option(256, "Tokens per training sequence.")
    dtype: str = option("float32", "Compute dtype (parameters stay float32).", DTYPES)
    scan_layers: bool = option(True, "Scan over layers (parameters stacked on a 'layers' axis) instead of "
                                     "separate layers.")
    unroll_layers: bool | None = option(None, "Unroll the scan over the layers: XLA then sees every layer (faster "
                                              "steps, compile time growing with depth); default: on GPUs and CPUs, "
                                              "where a looped step zero-fills, copies and slices stacked "
                                              "activations (README, Performance).")
    remat: str = option("auto", "What a block keeps for the backward pass: none (every matmul output; unrolled "
                                "layers, everything), dots (the weight matmuls' outputs), full (its input); auto: the "
                                "cheapest that fits the device memory (none where it is unknown).", REMAT_POLICIES)
    init_std: float = option(0.02, "Standard deviation of the normal weight initialisation.")
    rope_base: float = option(10000.0, "Rotary embedding base.")
    options: ArchOptions = ArchOptions()

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def replace(self, **changes) -> "ModelConfig":
        """dataclasses.replace that routes fields of `options` into the options."""
        own = {k: v for k, v in changes.items() if k not in _field_names(self.options)}
        theirs = {k: v for k, v in changes.items() if k in _field_names(self.options)}
        return dataclasses.replace(self, **own, options=dataclasses.replace(self.options, **theirs))

    def validate(self) -> "ModelConfig":
        for flag in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "seq_len"):
            if getattr(self, flag) < 1:
                raise UsageError(f"--{flag}", "must be a positive integer")
        if self.d_model % self.n_heads:
            raise UsageError("--n_heads", f"must divide --d_model={self.d_model}")
        if self.d_head % 2:
            raise UsageError("--n_heads", "d_model / n_heads must be even (position encodings rotate channel pairs)")
        check_choice(self.dtype, "dtype", DTYPES)
        check_choice(self.remat, "remat", REMAT_POLICIES)
        if self.options.min_layers() > self.n_layers:
            raise UsageError(self.options.depth_flag, f"needs at least {self.options.min_layers()} blocks; "
                                                      f"--n_layers is {self.n_layers}")
        self.options.validate(self)
        return self


def _field_names(config) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and bookkeeping of one run. `tokens` fixes the number of steps."""

    tokens: int = option(2_000_000, "Training tokens (fixes the number of steps; 2e7 is accepted).")
    batch_size: int = option(16, "Global batch size in sequences.")
    microbatches: int = option(0, "Gradient-accumulation slices of each batch (0: the fewest that fit the device "
                                  "memory; 1 where it is unknown).")
    learning_rate: float = option(3e-3, "Peak learning rate.")
    warmup_frac: float = option(0.05, "Fraction of the run spent in linear warmup.")
    weight_decay: float = option(0.1, "Decoupled weight decay on matrices.")
    grad_clip: float = option(1.0, "Global gradient-norm clipping threshold.")
    b1: float = option(0.9, "Adam beta1.")
    b2: float = option(0.95, "Adam beta2.")
    eps: float = option(1e-8, "Adam epsilon.")
    seed: int = option(0, "Seed of the initialisation and of the data order.")
    data: str = option("pystdlib", "Data source: pystdlib, synthetic or tfds:NAME.")
    tokenizer: str = option("bytes", "Tokenizer of text data: bytes (UTF-8 bytes and an end-of-document id) or "
                                     "spm:N (SentencePiece, N pieces, trained on the training split).")
    data_dir: str | None = option(None, "TFDS data directory (where `tfds build` prepared the dataset).")
    text_key: str = option("text", "The TFDS feature holding the text.")
    data_tokens: int = option(0, "Pack the training split's documents, in the dataset's order, up to this many "
                                 "tokens (0: all of them): a corpus larger than memory, such as c4, taken to what the "
                                 "runs read.")
    eval_every: int = option(0, "Steps between evaluations (0: ten per run).")
    eval_batches: int = option(4, "Held-out batches per evaluation.")
    log_every: int = option(10, "Steps between metrics records.")
    checkpoint_every: int = option(200, "Steps between checkpoints.")
    keep_checkpoints: int = option(2, "Checkpoints kept (the most recent).")

    def steps(self, seq_len: int) -> int:
        return self.tokens // (self.batch_size * seq_len)

    def validate(self, seq_len: int) -> "TrainConfig":
        for name in ("batch_size", "eval_batches", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name}", "must be a positive integer")
        if self.microbatches < 0:
            raise UsageError("--microbatches", "must be >= 0 (0: chosen to fit the device memory)")
        if self.data_tokens and self.data_tokens <= seq_len:
            raise UsageError("--data_tokens", f"must be 0 (the whole training split) or more than --seq_len {seq_len}")
        check_positive(self, "learning_rate", "grad_clip", "eps")
        if not (0 <= self.warmup_frac < 1):
            raise UsageError("--warmup_frac", "must be in [0, 1)")
        for name in ("b1", "b2"):
            if not (0 <= getattr(self, name) < 1):
                raise UsageError(f"--{name}", "must be in [0, 1)")
        if self.steps(seq_len) < 1:
            raise UsageError(
                "--tokens",
                f"{self.tokens} tokens is less than one batch ({self.batch_size} x {seq_len}); raise it",
            )
        return self


MESH_AXES = ("data", "fsdp", "expert", "model")  # outermost first: 'model' on the fastest links


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ('data', 'fsdp', 'expert', 'model') mesh; one entry may be -1 to fill the devices.

    'data' replicates the state, 'fsdp' shards it (ZeRO-3), both split the batch, as 'expert' does.
    """

    data: int = -1
    model: int = 1
    expert: int = 1
    fsdp: int = 1

    @classmethod
    def parse(cls, text: str) -> "MeshConfig":
        """Parses 'data=-1,fsdp=1,model=2,expert=1' (missing axes keep their defaults)."""
        sizes = {}
        for item in filter(None, text.replace(" ", "").split(",")):
            name, _, value = item.partition("=")
            if name not in MESH_AXES or not value.lstrip("-").isdigit():
                raise UsageError("--mesh", f"bad entry {item!r}; write e.g. data=-1,fsdp=1,model=2,expert=1")
            sizes[name] = int(value)
        return cls(**sizes)

    def resolve(self, num_devices: int) -> dict[str, int]:
        """Concrete sizes {axis: size}, in MESH_AXES order, whose product is `num_devices`."""
        sizes = {axis: getattr(self, axis) for axis in MESH_AXES}
        if list(sizes.values()).count(-1) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
            raise UsageError("--mesh", "sizes must be positive, with at most one -1 to fill")
        known = math.prod(s for s in sizes.values() if s != -1)
        for axis, size in sizes.items():
            if size == -1:
                if num_devices % known:
                    raise UsageError("--mesh", f"{known} does not divide the {num_devices} devices")
                sizes[axis] = num_devices // known
        if math.prod(sizes.values()) != num_devices:
            raise UsageError(
                "--mesh", f"product {math.prod(sizes.values())} != {num_devices} devices; use -1 on one axis to fill"
            )
        return sizes

    def text(self) -> str:
        """The --mesh spelling of this mesh."""
        return ",".join(f"{axis}={getattr(self, axis)}" for axis in MESH_AXES)
