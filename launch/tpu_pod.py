"""Runs a command on every worker of a Cloud TPU VM pod slice (gcloud ... tpu-vm ssh --worker=all).

    python -m launch.tpu_pod --tpu_name my-v5p-64 --zone us-east5-a --repo_dir '~/scaling' --setup \\
        -- python -m experiments.train --size 1e9 --workdir /mnt/shared/runs/gpt-1e9

The repository must already be at --repo_dir on every worker (e.g. a clone on each, or NFS);
--setup runs `pip install -e .` there first. --workdir must be a filesystem all workers share
(NFS, a gcsfuse mount): every host writes its shards of each checkpoint there. Every worker runs the same program and joins the job
through jax.distributed.initialize() (SCALING_DISTRIBUTED=auto, read by scaling/distributed.py).
--dry_run prints the gcloud commands instead of running them.
"""
import shlex
import subprocess

from launch import common


def remote_dir(path: str) -> str:
    """`path` quoted for the remote shell, keeping a leading ~/ unquoted so that it still expands."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(path)


def gcloud_ssh(args, remote_command: str) -> list[str]:
    """The gcloud argv running `remote_command` (one shell string) on all workers of the slice."""
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu_name, "--zone", args.zone]
    if args.project:
        argv += ["--project", args.project]
    return argv + ["--worker=all", "--command", remote_command]


def commands(args, command: list[str]) -> list[list[str]]:
    """The gcloud invocations to run in order: the optional setup, then the command itself."""
    cd = f"cd {remote_dir(args.repo_dir)}"
    remote = [f"{cd} && SCALING_DISTRIBUTED=auto {shlex.join(command)}"]
    if args.setup:
        remote.insert(0, f"{cd} && pip install -e .")
    return [gcloud_ssh(args, r) for r in remote]


def run(argv: list[str]) -> int:
    parser = common.make_parser("launch.tpu_pod", __doc__)
    parser.add_argument("--tpu_name", required=True, help="Name of the TPU VM (pod slice).")
    parser.add_argument("--zone", required=True, help="Its zone, e.g. us-east5-a.")
    parser.add_argument("--project", default=None, help="Google Cloud project (default: gcloud's).")
    parser.add_argument("--repo_dir", required=True, help="This repository's path on the workers, e.g. ~/scaling.")
    parser.add_argument("--setup", action="store_true", help="pip install -e . on every worker first.")
    parser.add_argument("--dry_run", action="store_true", help="Print the gcloud commands instead of running them.")
    args, command = common.parse(parser, argv)
    for flag in ("tpu_name", "zone", "repo_dir"):
        if not getattr(args, flag).strip():
            raise common.UsageError(f"--{flag}", "must not be empty")
    for gcloud in commands(args, command):
        if args.dry_run:
            print(shlex.join(gcloud))
            continue
        try:
            status = subprocess.run(gcloud).returncode
        except FileNotFoundError:
            raise common.UsageError("--dry_run", "gcloud not found; install the Google Cloud CLI or print the commands")
        if status:
            return status
    return 0


if __name__ == "__main__":
    common.main(run)
