"""Runs a command on every worker of a Cloud TPU VM pod slice (gcloud ... tpu-vm ssh --worker=all).

    python -m launch.tpu_pod --tpu_name my-v5p-64 --zone us-east5-a --repo_dir '~/scaling' --setup \\
        -- python -m experiments.isoflop --budget 6e18 --workdir gs://my-bucket/isoflop-6e18

First the repository reaches every worker: --sync copy (default) packs this checkout's files (git
ls-files, uncommitted edits included), copies the archive to every worker and unpacks it into
--repo_dir; --sync clone clones --repo_url at --revision there; --sync none expects it in place
(NFS). --setup then installs it there with jax for TPUs at this host's jax version (`pip install -e
'.[data]' 'jax[tpu]==X'`: the plain jax a bare worker would otherwise get runs on its CPU, not its
chips). Every worker runs the same program and joins the job through jax.distributed.initialize()
(SCALING_DISTRIBUTED=auto, read by scaling/distributed.py).
--workdir may be a gs:// path (every file goes through etils.epath; orbax writes each host's shards).
--dry_run prints every command (the local packing, then each gcloud call) instead of running it.
"""
import importlib.metadata
import shlex
import subprocess

from launch import common

ARCHIVE = "/tmp/scaling-src.tar.gz"


def remote_dir(path: str) -> str:
    """`path` quoted for the remote shell, keeping a leading ~/ unquoted so that it still expands."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(path)


def gcloud(args, verb: list[str]) -> list[str]:
    """A gcloud compute tpus tpu-vm command on all workers of the slice."""
    argv = ["gcloud", "compute", "tpus", "tpu-vm", *verb, "--zone", args.zone]
    if args.project:
        argv += ["--project", args.project]
    return argv + ["--worker=all"]


def ssh(args, remote_command: str) -> list[str]:
    """The gcloud argv running `remote_command` (one shell string) on all workers."""
    return gcloud(args, ["ssh", args.tpu_name]) + ["--command", remote_command]


def sync(args) -> list[list[str]]:
    """The commands that put the repository at --repo_dir on every worker."""
    repo = remote_dir(args.repo_dir)
    if args.sync == "copy":
        pack = ["sh", "-c", f"git ls-files -z | tar --null -T - -czf {ARCHIVE}"]
        copy = gcloud(args, ["scp", ARCHIVE, f"{args.tpu_name}:{ARCHIVE}"])
        return [pack, copy, ssh(args, f"mkdir -p {repo} && tar -xzf {ARCHIVE} -C {repo}")]
    if args.sync == "clone":
        url, revision = shlex.quote(args.repo_url), shlex.quote(args.revision)
        fetch = f"(git -C {repo} fetch origin || git clone {url} {repo})"
        return [ssh(args, f"{fetch} && git -C {repo} checkout {revision}")]
    return []


def install_command() -> str:
    """pip installs the repository with its data extra, and jax with libtpu at the version this host runs."""
    return f"pip install -e '.[data]' 'jax[tpu]=={importlib.metadata.version('jax')}'"


def commands(args, command: list[str]) -> list[list[str]]:
    """The commands to run in order: sync, the optional install, then the command itself."""
    cd = f"cd {remote_dir(args.repo_dir)}"
    install = [ssh(args, f"{cd} && {install_command()}")] if args.setup else []
    return sync(args) + install + [ssh(args, f"{cd} && SCALING_DISTRIBUTED=auto {shlex.join(command)}")]


def run(argv: list[str]) -> int:
    parser = common.make_parser("launch.tpu_pod", __doc__)
    parser.add_argument("--tpu_name", required=True, help="Name of the TPU VM (pod slice).")
    parser.add_argument("--zone", required=True, help="Its zone, e.g. us-east5-a.")
    parser.add_argument("--project", default=None, help="Google Cloud project (default: gcloud's).")
    parser.add_argument("--repo_dir", required=True, help="This repository's path on the workers, e.g. ~/scaling.")
    parser.add_argument("--sync", choices=("copy", "clone", "none"), default="copy",
                        help="How the repository reaches the workers (default: copy this checkout).")
    parser.add_argument("--repo_url", default=None, help="With --sync clone: the repository to clone.")
    parser.add_argument("--revision", default="main", help="With --sync clone: the branch, tag or commit.")
    parser.add_argument("--setup", action="store_true", help="Install the repository and jax[tpu] (this host's jax "
                                                             "version) on every worker first.")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands instead of running them.")
    args, command = common.parse(parser, argv)
    for flag in ("tpu_name", "zone", "repo_dir"):
        if not getattr(args, flag).strip():
            raise common.UsageError(f"--{flag}", "must not be empty")
    if args.sync == "clone" and not args.repo_url:
        raise common.UsageError("--repo_url", "--sync clone needs the repository URL to clone")
    for argv_ in commands(args, command):
        if args.dry_run:
            print(shlex.join(argv_))
            continue
        try:
            status = subprocess.run(argv_).returncode
        except FileNotFoundError:
            raise common.UsageError("--dry_run", f"{argv_[0]} not found; install the Google Cloud CLI or print "
                                                 "the commands") from None
        if status:
            return status
    return 0


if __name__ == "__main__":
    common.main(run)
