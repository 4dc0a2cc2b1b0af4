"""isoFLOP sweep: python -m experiments.isoflop --budget 6e18 [--archs gpt,...] [--dry_run].

Plans --num_sizes model sizes per architecture around the expected compute-optimal size, prints the
plan with an estimated wall time measured on the current devices, then (unless --dry_run) trains
every run, resumably, and writes results.jsonl, fits.json and isoflop.png into --workdir.
"""
from absl import flags

from experiments import cli
from scaling import sweep
from scaling.config import TrainConfig, UsageError
from scaling.models.registry import ARCHITECTURES

flags.DEFINE_float("budget", None, "Training FLOPs per run (e.g. 6e18).", required=True)
flags.DEFINE_string("archs", "gpt", "Comma-separated architectures, one isoFLOP curve each.")
flags.DEFINE_integer("num_sizes", 7, "Model sizes per architecture, evenly spaced in log N.")
flags.DEFINE_integer("batch_size", None, "Global batch in sequences (default: per budget, up to 512).")
flags.DEFINE_float("learning_rate", None, "Peak LR for every run (default: Kaplan et al.'s rule per size).")
flags.DEFINE_integer("seed", 0, "Seed of every run's initialisation and data order.")
flags.DEFINE_bool("dry_run", False, "Print the plan and its estimated wall time; train nothing.")
flags.DEFINE_enum("x_axis", "params", ["params", "nonembed_params", "active_params"],
                  "Size the parabolas are fitted and plotted against (active_params: mixtures of experts by the "
                  "parameters a token uses).")
cli.define_model_flags(default_seq_len=1024)
cli.define_common_flags()
FLAGS = flags.FLAGS
DAY = 86400.0


def main(argv) -> None:
    del argv
    archs = [a for a in FLAGS.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if not archs or unknown:
        raise UsageError("--archs", f"unknown {unknown or 'empty list'}; choose from {', '.join(ARCHITECTURES)}")
    base = cli.model_config(archs[0])
    mesh_cfg = cli.mesh_config()
    train_base = TrainConfig(data=FLAGS.data, seed=FLAGS.seed)
    plan = sweep.plan_sweep(FLAGS.budget, archs, FLAGS.num_sizes, base, train_base, FLAGS.batch_size, FLAGS.learning_rate)
    sweep.check_mesh(plan, mesh_cfg)
    workdir = FLAGS.workdir or f"runs/isoflop-{FLAGS.budget:.3g}"
    if not FLAGS.dry_run:
        sweep.check_workdir(workdir, plan)
    seconds = sweep.estimate_seconds(plan, mesh_cfg)
    print(sweep.format_plan(plan, seconds))
    if sum(seconds.values()) > DAY:
        print(f"WARNING: this sweep is estimated to take {sweep.format_duration(sum(seconds.values()))} on the current devices")
    if FLAGS.dry_run:
        return
    sweep.write_plan(workdir, plan)
    sweep.run_sweep(plan, workdir, mesh_cfg, x_key=FLAGS.x_axis)
    print(f"wrote {workdir}/results.jsonl, fits.json and isoflop.png")


if __name__ == "__main__":
    cli.run(main)
