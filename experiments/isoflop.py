"""isoFLOP sweep: python -m experiments.isoflop --budget 6e18 [--budgets C1,C2] [--archs gpt,...] [--dry_run].

Plans --num_sizes model sizes per architecture around the expected compute-optimal size, prints the
plan with an estimated wall time measured on the current devices, then (unless --dry_run) trains
every run, resumably, and writes results.jsonl, fits.json and isoflop.png into --workdir.
The sweep picks each run's tokens, batch size (up to 512 sequences) and learning rate (Kaplan et al.'s
rule per size); --batch_size and --learning_rate given explicitly apply to every run instead. The
sizes and each run's tokens and evals are the sweep's to choose: --size, the shape flags (--d_model,
--n_layers, --n_heads, --d_ff), --tokens, --eval_every and --eval_batches are refused. Each
run's remat and microbatches are fitted to the device memory (--device_memory_gib, or what the device
reports) by compiling its train step (--dry_run too) and shown in the plan.
"""
import jax
from absl import flags

from experiments import cli
from scaling import hardware, sweep
from scaling.config import ModelConfig, UsageError
from scaling.models.registry import ARCHITECTURES
from scaling.nn.stack import unrolls
from scaling.train import fitting
from scaling.train.metrics import format_duration

flags.DEFINE_float("budget", None, "Training FLOPs per run (e.g. 6e18).")
flags.DEFINE_list("budgets", None, "Several budgets in one sweep (e.g. 1e12,3e12,1e13): one parabola per "
                                   "(architecture, budget) and the N_opt(C), D_opt(C) power laws.")
flags.DEFINE_integer("seeds", 1, "Train every point with this many seeds (data order and initialisation); fits "
                                 "use the mean, tables and plots the spread.")
flags.DEFINE_integer("lr_search", 0, "Tune each architecture's learning rate on a K-point grid (K >= 3) at a "
                                     "calibration size first (0: Kaplan et al.'s rule).")
flags.DEFINE_enum("fit_metric", "eval_loss", ["eval_loss", "eval_causal_loss", "eval_bpb"],
                  "What the parabolas fit: final eval loss (nats per token), the same of the pass sampling "
                  "takes (differs only where training routes by later tokens: mod, staged mode), or bits "
                  "per byte.")
flags.DEFINE_string("archs", "gpt", "Comma-separated architectures, one isoFLOP curve each.")
flags.DEFINE_integer("num_sizes", 7, "Model sizes per architecture, evenly spaced in log N.")
flags.DEFINE_bool("dry_run", False, "Print the plan and its estimated wall time; train nothing.")
flags.DEFINE_string("target", None, "With --dry_run, plan for hardware you may not have: KIND:DEVICES (e.g. h100:16, "
                                    "v5p:32): runs fitted to the memory jax lets a step use there (default: a "
                                    "GPU's XLA_PYTHON_CLIENT_MEM_FRACTION, 0.75, of its memory; a TPU's all), "
                                    "wall time from its peak at --assume_mfu.")
flags.DEFINE_float("assume_mfu", None, "MFU for --target (default: the best this toolkit measured on that kind, "
                                       "else 0.4).")
flags.DEFINE_enum("x_axis", "params", ["params", "nonembed_params", "active_params"],
                  "Size the parabolas are fitted and plotted against (active_params: mixtures of experts by the "
                  "parameters a token uses).")
cli.define_model_flags()
cli.define_train_flags()
cli.define_common_flags()
FLAGS = flags.FLAGS
FLAGS.set_default("seq_len", 1024)  # the papers' context; the sweep contract (DESIGN.md)
DAY = 86400.0
CHOSEN_PER_RUN = ("size", "d_model", "n_layers", "n_heads", "d_ff", "tokens", "eval_every", "eval_batches")


def check_not_given_per_run() -> None:
    """UsageError for a flag whose value the sweep chooses for each run (it would be silently replaced)."""
    given = [name for name in CHOSEN_PER_RUN if cli.given(name)]
    if given:
        raise UsageError(f"--{given[0]}", "is chosen for each run by the sweep (sizes around each budget's "
                                          "optimum, tokens = budget / FLOPs per token); drop it")


def budgets() -> list[float]:
    """--budget, or the --budgets list (not both)."""
    if (FLAGS.budget is None) == (FLAGS.budgets is None):
        raise UsageError("--budget", "give --budget C or --budgets C1,C2,... (one of them)")
    if FLAGS.budgets is None:
        return [FLAGS.budget]
    try:
        return [float(b) for b in FLAGS.budgets]
    except ValueError:
        listed = ",".join(FLAGS.budgets)
        raise UsageError("--budgets", f"{listed} is not a list of numbers; write e.g. 1e12,3e12") from None


def planned_target() -> tuple | None:
    """(accelerator, devices to plan on, MFU) of --target, or None. The devices are compile-only ones of
    that kind where XLA can compile for it here (scaling.hardware), else as many fake CPU devices."""
    if FLAGS.target is None:
        return None
    accelerator, count = hardware.parse_target(FLAGS.target)
    if not FLAGS.dry_run:
        raise UsageError("--target", "plans for other hardware and trains nothing: add --dry_run")
    mfu = FLAGS.assume_mfu or accelerator.measured_mfu or hardware.DEFAULT_MFU
    if not 0 < mfu <= 1:
        raise UsageError("--assume_mfu", "must be in (0, 1]")
    devices = hardware.compile_only_devices(accelerator, count)
    if devices is None and jax.device_count() != count:
        raise UsageError("--target", f"plans {count} devices but {jax.device_count()} are visible; simulate them "
                                     f"with XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    return accelerator, devices or jax.devices(), mfu


def target_layers(model_cfg: ModelConfig, target: tuple | None) -> ModelConfig:
    """The model with the layer loop the --target platform would choose, where fake CPU devices stand in for it."""
    if target is None or target[1][0].platform != "cpu":
        return model_cfg
    return model_cfg.replace(unroll_layers=unrolls(model_cfg, "gpu" if target[0].gpu else "tpu"))


def planning_compiler(accelerator, devices) -> str:
    """Which compiler's memory analysis a --target plan rests on."""
    if devices[0].platform != "cpu":
        device = devices[0]
        return f"memory planned by XLA:{device.platform.upper()} for {len(devices)} compile-only {device.device_kind}"
    note = f"memory planned by XLA:CPU on {len(devices)} fake devices, an approximation"
    if accelerator.gpu is not None:
        note += (" that holds attention's T x T scores where a GPU runs cuDNN flash attention; install jax's CUDA "
                 "plugin to plan with XLA:GPU (README, Running on a pod)")
    return note


def main(argv) -> None:
    del argv
    check_not_given_per_run()
    archs = [a for a in FLAGS.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if not archs or unknown:
        raise UsageError("--archs", f"unknown {unknown or 'empty list'}; choose from {', '.join(ARCHITECTURES)}")
    target = planned_target()
    bases = [target_layers(cli.model_config(arch), target) for arch in archs]
    mesh_cfg = cli.mesh_config()
    batch_size = FLAGS.batch_size if cli.given("batch_size") else None
    learning_rate = FLAGS.learning_rate if cli.given("learning_rate") else None
    if FLAGS.lr_search and learning_rate:
        raise UsageError("--lr_search", "searches the learning rate; drop --learning_rate or --lr_search")
    plan = sweep.plan_sweep(budgets(), bases, FLAGS.num_sizes, cli.train_config(), batch_size, learning_rate,
                            seeds=FLAGS.seeds, lr_search=FLAGS.lr_search)
    memory_gib = cli.device_memory_gib() or (hardware.usable_memory_gib(target[0]) if target else None)
    devices = target[1] if target else None
    sweep.check_mesh(plan, mesh_cfg, devices)
    workdir = FLAGS.workdir or "runs/isoflop-" + "-".join(f"{b:.3g}" for b in plan["budgets"])
    if not FLAGS.dry_run:  # a dry run reads no data: a pod's plan is made where its data is not
        sweep.check_workdir(workdir, plan)
        sweep.check_data(plan, mesh_cfg, workdir)
        cli.keep_compiled(workdir)
    plan = sweep.fit_plan(plan, mesh_cfg, fitting.device_memory(memory_gib), devices=devices)
    seconds = sweep.estimate_on_target(plan, *target) if target else sweep.estimate_seconds(plan, mesh_cfg)
    print(sweep.format_plan(plan, seconds))
    if target:
        accelerator, devices, mfu = target
        source = f"measured by this toolkit, {accelerator.measured_on}" if mfu == accelerator.measured_mfu \
            else "an assumption"
        print(f"wall time for {len(devices)} x {accelerator.name} ({memory_gib:g} of {accelerator.memory_gib:g} GiB "
              f"usable each) at MFU {mfu:.2f} ({source}); {planning_compiler(accelerator, devices)}")
    if sum(seconds.values()) > DAY:
        print(f"WARNING: this sweep is estimated to take {format_duration(sum(seconds.values()))} on the current "
              "devices")
    if FLAGS.dry_run:
        return
    sweep.write_plan(workdir, plan)
    sweep.run_sweep(plan, workdir, mesh_cfg, x_key=FLAGS.x_axis, device_memory_gib=memory_gib,
                    metric=f"final_{FLAGS.fit_metric}")
    print(f"wrote {workdir}/results.jsonl, fits.json and isoflop.png")


if __name__ == "__main__":
    cli.run(main)
