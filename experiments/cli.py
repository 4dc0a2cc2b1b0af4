"""Flags generated from the config dataclasses, and the wrapper that turns bad input into one line and exit 2.

Each flag is a config field (scaling/config.py, and every registered architecture's options): its
type, default and help come from the field, so an option is declared once.
"""
import dataclasses
import os
import sys

import jax
from absl import app, flags, logging

from scaling import compiler, data, distributed
from scaling.config import MeshConfig, ModelConfig, TrainConfig, UsageError, option_fields
from scaling.models.registry import ARCHITECTURES, get_architecture
from scaling.shapes import d_ff_for, shape_for_params
from scaling.train.preemption import Preempted

FLAGS = flags.FLAGS
SHAPE_FLAGS = ("d_model", "n_layers", "n_heads", "d_ff")


class _Count(flags.ArgumentParser):
    """Parses an integer, written plainly or as an integral float such as 2e7."""

    syntactic_help = "an integer"

    def parse(self, argument):
        value = float(argument) if isinstance(argument, str) else argument
        if value != int(value):
            raise ValueError(f"{argument!r} is not an integer")
        return int(value)

    def flag_type(self):
        return "int"


def _define(field: dataclasses.Field, help_text: str) -> None:
    """One absl flag for a config field: bool, enum (the field's choices), integer, float or string."""
    name, default, choices = field.name, field.default, field.metadata["choices"]
    if choices:
        flags.DEFINE_enum(name, default, list(choices), help_text)
    elif field.type in (bool, bool | None):
        flags.DEFINE_bool(name, default, help_text)
    elif field.type is int:
        flags.DEFINE(_Count(), name, default, help_text)
    elif field.type is float:
        flags.DEFINE_float(name, default, help_text)
    else:
        flags.DEFINE_string(name, default, help_text)


def define_flags(config_type, names: tuple[str, ...] | None = None) -> None:
    """Flags for the option fields of `config_type` (all, or those in `names`)."""
    for field in option_fields(config_type):
        if names is None or field.name in names:
            _define(field, field.metadata["help"])


def _arch_option_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """{field name: (field, architectures using it)} over every registered architecture's options."""
    fields = {}
    for name, arch in ARCHITECTURES.items():
        for field in option_fields(arch.options):
            known, users = fields.setdefault(field.name, (field, []))
            if known.default != field.default or known.type != field.type:
                raise TypeError(f"option {field.name} is declared twice with different types or defaults")
            users.append(name)
    return fields


def define_model_flags() -> None:
    """ModelConfig's fields, every architecture's options (help names the architectures), and --size."""
    define_flags(ModelConfig)
    for field, users in _arch_option_fields().values():
        _define(field, f"{field.metadata['help']} ({', '.join(users)})")
    flags.DEFINE_float("size", None, "Target non-embedding parameters; picks a shape from the size family.")


def define_train_flags(names: tuple[str, ...] | None = None) -> None:
    """TrainConfig's flags (all, or those in `names`; the others keep their defaults)."""
    define_flags(TrainConfig, names)


def define_common_flags(names: tuple[str, ...] = ("mesh", "workdir", "device_memory_gib", "compilation_cache")):
    """The device and output flags (all, or those in `names`: a command defines only the flags it uses,
    so that absl refuses another rather than the command ignoring it)."""
    if "mesh" in names:
        flags.DEFINE_string("mesh", "data=-1,fsdp=1,model=1,expert=1", "Device mesh sizes; one entry may be -1 to "
                                                                       "fill.")
    if "workdir" in names:
        flags.DEFINE_string("workdir", None, "Output directory.")
    if "device_memory_gib" in names:
        flags.DEFINE_float("device_memory_gib", None, "Memory of one device to fit runs to (default: what the "
                                                      "device reports; a CPU reports none and nothing is fitted).")
    if "compilation_cache" in names:
        flags.DEFINE_string("compilation_cache", None, "Directory (local or gs://) keeping compiled steps, loaded "
                                                       "instead of compiling them again when a run resumes "
                                                       "(default: <workdir>/compilation_cache, or "
                                                       "JAX_COMPILATION_CACHE_DIR where set; 'none': keep nothing).")


def given(name: str) -> bool:
    """True when flag `name` was set on the command line."""
    return FLAGS[name].present > 0


def keep_compiled(workdir: str) -> None:
    """Compiled steps kept in --compilation_cache, by default in `workdir` (every host that reads the
    workdir, as on a pod with a gs:// one, then loads them when the command is run again), unless jax
    was given a cache directory of its own (JAX_COMPILATION_CACHE_DIR)."""
    if FLAGS.compilation_cache == "none":
        jax.config.update("jax_compilation_cache_dir", None)
    elif FLAGS.compilation_cache:
        compiler.keep_compiled(FLAGS.compilation_cache)
    elif not jax.config.jax_compilation_cache_dir:
        compiler.keep_compiled(os.path.join(workdir, "compilation_cache"))


def mesh_config() -> MeshConfig:
    return MeshConfig.parse(FLAGS.mesh)


def device_memory_gib() -> float | None:
    """--device_memory_gib, checked."""
    gib = FLAGS.device_memory_gib
    if gib is not None and not gib > 0:
        raise UsageError("--device_memory_gib", "must be a positive number of GiB (e.g. 80 for an H100)")
    return gib


def model_config(arch: str | None = None, overrides: dict | None = None) -> ModelConfig:
    """The model from --size or the explicit shape flags (not both), vocabulary from the data source;
    `overrides` ({flag name: value}, from `model_overrides`) replace those flags' values."""
    spec = get_architecture(arch or FLAGS.arch)
    overrides = overrides or {}
    value = lambda name: overrides[name] if name in overrides else FLAGS[name].value
    fields = {f.name: value(f.name) for f in option_fields(ModelConfig)
              if f.name not in ("arch", "vocab_size", *SHAPE_FLAGS)}
    vocab = FLAGS.vocab_size if given("vocab_size") else data.vocab_size(FLAGS.data, FLAGS.tokenizer, FLAGS.data_dir,
                                                                         FLAGS.text_key)
    options = spec.options(**{f.name: value(f.name) for f in option_fields(spec.options)})
    base = ModelConfig(arch=spec.name, vocab_size=vocab, options=options, **fields)
    shape = {name: value(name) for name in SHAPE_FLAGS if given(name) or name in overrides}
    if FLAGS.size is not None:
        if shape:
            flags_given = ", ".join(f"--{name}" for name in shape)
            raise UsageError("--size", f"give either --size or the shape flags {flags_given}, not both")
        return shape_for_params(FLAGS.size, base).validate()
    if "d_model" in shape and "d_ff" not in shape:
        shape["d_ff"] = d_ff_for(shape["d_model"])
    return dataclasses.replace(base, **shape).validate()


def model_overrides(flag: str, arch: str) -> dict:
    """{flag name: parsed value} of --`flag`, "name=value,name=value": model flags of `arch` (its
    options and ModelConfig's, but for arch and vocab_size), each value parsed as that flag parses it."""
    names = {f.name for f in option_fields(ModelConfig) + option_fields(get_architecture(arch).options)}
    names -= {"arch", "vocab_size"}
    overrides = {}
    for item in filter(None, (part.strip() for part in FLAGS[flag].value.split(","))):
        name, equals, text = (part.strip() for part in item.partition("="))
        if not equals or name not in names:
            raise UsageError(f"--{flag}", f"{item!r} is not name=value of a model flag of {arch} "
                                          "(e.g. n_layers=8)")
        try:
            overrides[name] = FLAGS[name].parser.parse(text)
        except ValueError as error:
            raise UsageError(f"--{flag}", f"{name}: {error}") from None
    return overrides


def train_config(**overrides) -> TrainConfig:
    """The TrainConfig of the flags that are defined (others keep their defaults), with `overrides`."""
    defined = {f.name: FLAGS[f.name].value for f in option_fields(TrainConfig) if f.name in FLAGS}
    return TrainConfig(**{**defined, **overrides})


def _parse_flags(argv):
    """absl parsing, but a bad flag value is one line and exit status 2 (absl's default is 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


PREEMPTED = 143  # 128 + SIGTERM, as a shell reports a process it stopped


def run(main) -> None:
    """app.run(main) where a UsageError becomes 'error: --flag: fix' on stderr and exit status 2, and
    a run stopped by SIGTERM (after saving) one line and exit status 143. Standard output is written a
    line at a time, so that a batch job's log shows each line as it is printed."""

    def guarded(argv):
        if hasattr(sys.stdout, "reconfigure"):  # a file's stream, not a notebook's
            sys.stdout.reconfigure(line_buffering=True)
        logging.set_verbosity(logging.WARNING)
        try:
            distributed.initialize()
            main(argv)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except Preempted as stop:
            print(stop, file=sys.stderr)
            sys.exit(PREEMPTED)

    app.run(guarded, flags_parser=_parse_flags)
