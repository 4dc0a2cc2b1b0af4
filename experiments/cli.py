"""Flags shared by the entry points, and the wrapper that turns bad input into one line and exit 2."""
import dataclasses
import sys

from absl import app, flags, logging

from scaling import data, distributed
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError
from scaling.shapes import d_ff_for, shape_for_params

FLAGS = flags.FLAGS


def define_model_flags(default_seq_len: int = 256) -> None:
    flags.DEFINE_string("arch", "gpt", "Architecture name (see scaling/models/registry.py).")
    flags.DEFINE_float("size", None, "Target non-embedding parameters; picks a shape from the size family.")
    flags.DEFINE_integer("d_model", None, "Model width (instead of --size).")
    flags.DEFINE_integer("n_layers", None, "Number of blocks (instead of --size).")
    flags.DEFINE_integer("n_heads", None, "Attention heads (instead of --size).")
    flags.DEFINE_integer("d_ff", None, "MLP hidden width (default 8/3 d_model rounded up to 64).")
    flags.DEFINE_integer("seq_len", default_seq_len, "Tokens per training sequence.")
    flags.DEFINE_integer("vocab_size", None, "Vocabulary size (default: the data source's).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (parameters stay float32).")
    flags.DEFINE_bool("scan_layers", True, "Scan over layers (compile once) instead of unrolling.")
    flags.DEFINE_enum("remat", "none", ["none", "full", "dots"], "Rematerialisation policy per block.")
    flags.DEFINE_integer("num_experts", 8, "Experts per MoE layer (switch).")
    flags.DEFINE_float("capacity_factor", 1.25, "Expert capacity factor in training (switch).")
    flags.DEFINE_float("eval_capacity_factor", 2.0, "Expert capacity factor in evaluation and sampling (switch).")
    flags.DEFINE_integer("moe_every", 2, "Every k-th block has an MoE FFN (switch; 1: every block).")
    flags.DEFINE_integer("group_size", 256, "Tokens per routing group (switch).")
    flags.DEFINE_float("router_z_loss", 0.0, "Router z-loss coefficient (switch; ST-MoE: 1e-3).")
    flags.DEFINE_integer("chunk_size", 64, "Lightning Attention chunk size, a power of two (tnl).")
    flags.DEFINE_bool("lrpe", False, "LRPE on the first layer (tnl).")


def define_train_flags() -> None:
    flags.DEFINE_float("tokens", 2e6, "Training tokens (fixes the number of steps).")
    flags.DEFINE_integer("batch_size", 16, "Global batch size in sequences.")
    flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.")
    flags.DEFINE_float("warmup_frac", 0.05, "Fraction of the run spent in linear warmup.")
    flags.DEFINE_float("weight_decay", 0.1, "Decoupled weight decay on matrices.")
    flags.DEFINE_integer("seed", 0, "Seed of the initialisation and of the data order.")
    flags.DEFINE_integer("eval_every", 0, "Steps between evaluations (0: ten per run).")
    flags.DEFINE_integer("eval_batches", 4, "Held-out batches per evaluation.")
    flags.DEFINE_integer("log_every", 10, "Steps between metrics records.")
    flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints.")


def define_common_flags() -> None:
    flags.DEFINE_string("data", "pystdlib", "Data source: pystdlib, synthetic or tfds:NAME.")
    flags.DEFINE_string("mesh", "data=-1,model=1,expert=1", "Device mesh sizes; one entry may be -1 to fill.")
    flags.DEFINE_string("workdir", None, "Output directory.")


def mesh_config() -> MeshConfig:
    return MeshConfig.parse(FLAGS.mesh)


def model_config(arch: str | None = None) -> ModelConfig:
    """The model from --size or the explicit shape flags (not both), vocabulary from the data source."""
    shape_flags = {name: FLAGS[name].value for name in ("d_model", "n_layers", "n_heads", "d_ff")}
    vocab = FLAGS.vocab_size or data.vocab_size(FLAGS.data)
    base = ModelConfig(
        arch=arch or FLAGS.arch,
        vocab_size=vocab,
        seq_len=FLAGS.seq_len,
        dtype=FLAGS.dtype,
        scan_layers=FLAGS.scan_layers,
        remat=FLAGS.remat,
        num_experts=FLAGS.num_experts,
        capacity_factor=FLAGS.capacity_factor,
        eval_capacity_factor=FLAGS.eval_capacity_factor,
        moe_every=FLAGS.moe_every,
        group_size=FLAGS.group_size,
        router_z_loss=FLAGS.router_z_loss,
        chunk_size=FLAGS.chunk_size,
        lrpe=FLAGS.lrpe,
    )
    if FLAGS.size is not None:
        given = [f"--{k}" for k, v in shape_flags.items() if v is not None]
        if given:
            raise UsageError("--size", f"give either --size or the shape flags {', '.join(given)}, not both")
        return shape_for_params(FLAGS.size, base).validate()
    shape = {k: v for k, v in shape_flags.items() if v is not None}
    if "d_model" in shape and "d_ff" not in shape:
        shape["d_ff"] = d_ff_for(shape["d_model"])
    return dataclasses.replace(base, **shape).validate()


def train_config(**overrides) -> TrainConfig:
    values = dict(
        tokens=int(FLAGS.tokens),
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        warmup_frac=FLAGS.warmup_frac,
        weight_decay=FLAGS.weight_decay,
        seed=FLAGS.seed,
        data=FLAGS.data,
        eval_every=FLAGS.eval_every,
        eval_batches=FLAGS.eval_batches,
        log_every=FLAGS.log_every,
        checkpoint_every=FLAGS.checkpoint_every,
    )
    return TrainConfig(**{**values, **overrides})


def _parse_flags(argv):
    """absl parsing, but a bad flag value is one line and exit status 2 (absl's default is 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run(main) -> None:
    """app.run(main) where a UsageError becomes 'error: --flag: fix' on stderr and exit status 2."""

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)
        try:
            distributed.initialize()
            main(argv)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded, flags_parser=_parse_flags)
