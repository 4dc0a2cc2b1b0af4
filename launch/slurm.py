"""Submits a command as a multi-node SLURM GPU job: one task per node, each driving all its GPUs.

    python -m launch.slurm --nodes 2 --gpus_per_node 8 --partition gpu --time 2-00:00:00 \\
        --job_name isoflop-6e18 -- python -m experiments.isoflop --budget 6e18 --workdir runs/isoflop-6e18

--time is required (a 6e18 sweep runs for days; no default could fit every job). The sbatch script
is written to --output_dir (with the job's log) and submitted from the current directory, which like
--workdir must be on a filesystem all nodes share (or --workdir a gs:// path); --dry_run prints it
instead. Every task calls jax.distributed.initialize(), which reads the coordinator, process count
and id from SLURM's environment (scaling/distributed.py). The job is requeueable: SLURM sends SIGTERM
--signal_lead seconds before the time limit (and on preemption); the trainer saves a checkpoint and
exits with status 143, and the script requeues the job, which re-runs the command and resumes.
"""
import os
import re
import shlex
import subprocess

from launch import common

TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$")  # SLURM's MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
NAME = re.compile(r"^[\w.,-]+$")


def check(args) -> None:
    """UsageError for values that would break an #SBATCH line."""
    if not TIME.match(args.time):
        raise common.UsageError("--time", f"{args.time!r} is not a SLURM time; write e.g. 12:00:00 or 2-00:00:00")
    for flag in ("job_name", "partition"):
        value = getattr(args, flag)
        if value is not None and not NAME.match(value):
            raise common.UsageError(f"--{flag}", f"{value!r} may hold only letters, digits and . , _ -")
    if any(c.isspace() for c in args.output_dir):
        raise common.UsageError("--output_dir", "#SBATCH --output cannot hold whitespace; choose a path without it")


def script(args, command: list[str], workdir: str) -> str:
    """The sbatch script: SLURM directives, then `srun COMMAND` from `workdir` on every node."""
    directives = {
        "job-name": args.job_name,
        "nodes": args.nodes,
        "ntasks-per-node": 1,
        "gpus-per-node": args.gpus_per_node,
        "time": args.time,
        "partition": args.partition,
        "output": os.path.join(os.path.abspath(args.output_dir), "%x-%j.out"),
        "requeue": "",
        "signal": f"B:TERM@{args.signal_lead}",
    }
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH --{key}" + (f"={value}" if value else "") for key, value in directives.items()
              if value is not None]
    lines += [
        "set -uo pipefail",
        f"cd {shlex.quote(workdir)}",
        "# One process per node drives all its GPUs (JAX's SLURM default would give each task one GPU).",
        f"export JAX_LOCAL_DEVICE_IDS={','.join(map(str, range(args.gpus_per_node)))}",
        "export SCALING_DISTRIBUTED=auto",
        f"srun --kill-on-bad-exit=1 {shlex.join(command)} &",
        "step=$!",
        "# SIGTERM (time limit or preemption): pass it on; the trainer checkpoints and exits with 143.",
        'trap \'kill -TERM "$step"\' TERM',
        'wait "$step"; status=$?',
        'if [ "$status" -gt 128 ]; then wait "$step"; status=$?; fi  # the first wait was cut short by the trap',
        'if [ "$status" -eq 143 ]; then scontrol requeue "$SLURM_JOB_ID"; fi',
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def submit(text: str, args) -> int:
    """Writes the script to <output_dir>/<job_name>.sbatch and hands it to sbatch."""
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"{args.job_name}.sbatch")
    with open(path, "w") as f:
        f.write(text)
    try:
        return subprocess.run(["sbatch", path]).returncode
    except FileNotFoundError:
        raise common.UsageError("--dry_run", f"sbatch not found (script left in {path}); run on a SLURM login node")


def run(argv: list[str]) -> int:
    parser = common.make_parser("launch.slurm", __doc__)
    parser.add_argument("--nodes", type=common.positive_int, default=1, help="Nodes (one task each).")
    parser.add_argument("--gpus_per_node", type=common.positive_int, default=8, help="GPUs per node.")
    parser.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's).")
    parser.add_argument("--time", required=True, help="Wall-clock limit per submission, e.g. 2-00:00:00.")
    parser.add_argument("--signal_lead", type=common.positive_int, default=300,
                        help="Seconds before the time limit at which SIGTERM asks the run to checkpoint.")
    parser.add_argument("--job_name", default="scaling", help="SLURM job name.")
    parser.add_argument("--output_dir", default="runs/slurm", help="Where the script and the job log go.")
    parser.add_argument("--dry_run", action="store_true", help="Print the script instead of submitting it.")
    args, command = common.parse(parser, argv)
    check(args)
    text = script(args, command, os.getcwd())
    if args.dry_run:
        print(text, end="")
        return 0
    return submit(text, args)


if __name__ == "__main__":
    common.main(run)
