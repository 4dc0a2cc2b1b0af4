"""Tests of launch/: a real 2-process CPU training job (its run in a GCS bucket served locally) against its
single-process twin, fail-fast supervision, one-line usage errors, and the SLURM script and gcloud commands in
dry-run mode."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EIGHT_DEVICES = "--xla_force_host_platform_device_count=8"
TRAIN = [
    *("-m", "experiments.train", "--mesh", "data=1,fsdp=8"),  # parameters sharded over both processes' devices
    *("--d_model", "64", "--n_layers", "1", "--n_heads", "1", "--seq_len", "32", "--batch_size", "8"),
    *("--tokens", str(6 * 8 * 32), "--log_every", "1", "--checkpoint_every", "3"),
    *("--eval_every", "3", "--eval_batches", "1"),
]


def clean_env(**extra) -> dict:
    """This process's environment without device-count or multi-process settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.startswith(("SCALING_", "SLURM_"))}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def python(args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `sys.executable ARGS` from the repository root."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


def metrics(run_dir: str) -> list[dict]:
    return [json.loads(line) for line in (epath.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_process_with_eight_devices(tmp_path, tfds_text, gcs_bucket):
    """On the locally built TFDS dataset, through the packed pipeline and a SentencePiece tokenizer
    trained on it (each process trains the same model deterministically); the two processes' run in a
    bucket, as on a pod (each writes its checkpoint shards, process 0 the shared files)."""
    multi_dir, single_dir = f"{gcs_bucket.url}/multi", str(tmp_path / "single")
    text = ["--data", tfds_text.name, "--data_dir", tfds_text.data_dir, "--tokenizer", "spm:320"]
    launcher = ["-m", "launch.local", "--num_processes", "2", "--devices_per_process", "4", "--", sys.executable]
    home = clean_env(HOME=str(tmp_path))  # a gs:// run keeps its tokenizer and tokenised data in ~/.cache/scaling
    multi = python([*launcher, *TRAIN, *text, "--workdir", multi_dir], home, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    single = python([*TRAIN, *text, "--workdir", single_dir], clean_env(XLA_FLAGS=EIGHT_DEVICES), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert '[0]   "complete": true' in multi.stdout and '[1]   "complete"' not in multi.stdout  # process 0 reports

    multi_log, single_log = metrics(multi_dir), metrics(single_dir)
    assert [r["step"] for r in multi_log] == [r["step"] for r in single_log] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r["loss"] for r in multi_log], [r["loss"] for r in single_log], rtol=1e-5)
    evals = lambda log: [r["eval_loss"] for r in log if r["eval_loss"] is not None]
    np.testing.assert_allclose(evals(multi_log), evals(single_log), rtol=1e-5)
    summaries = [json.loads((epath.Path(run_dir) / "summary.json").read_text()) for run_dir in (multi_dir, single_dir)]
    for run_dir, summary in zip((multi_dir, single_dir), summaries):
        assert sorted(path.name for path in (epath.Path(run_dir) / "checkpoints").iterdir()) == ["3", "6"]
        tokenizer = summary["data_fingerprint"]["tokenizer"]
        assert tokenizer["spec"] == "spm:320" and tokenizer["vocab_size"] == 320 and len(tokenizer["sha256"]) == 64
        # Bits per byte: the loss in bits over the UTF-8 bytes the tokens cover (> 1 byte per spm token).
        assert 0 < summary["final_eval_bpb"] < summary["final_eval_loss"] / np.log(2)
    assert summaries[0]["data_fingerprint"] == summaries[1]["data_fingerprint"]  # the same tokenizer, trained twice
    assert list((tmp_path / ".cache" / "scaling" / "tokenizers").iterdir())  # not beside the run in the bucket
    shards = {path.name for path in (epath.Path(multi_dir) / "checkpoints" / "6" / "default").iterdir()}
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= shards  # each process wrote its own


def test_local_sets_the_process_env_and_prefixes_output():
    keys = ["SCALING_NUM_PROCESSES", "SCALING_PROCESS_ID", "SCALING_CPU_COLLECTIVES", "XLA_FLAGS", "JAX_PLATFORMS"]
    show = f"import os; print(*(os.environ.get(k) for k in {keys}))"
    launcher = ["-m", "launch.local", "--num_processes", "3", "--devices_per_process", "2"]
    result = python([*launcher, "--", sys.executable, "-c", show], clean_env(XLA_FLAGS=f"{EIGHT_DEVICES} --xla_foo=1"))
    assert result.returncode == 0, result.stderr
    expected = "3 {i} gloo --xla_foo=1 --xla_force_host_platform_device_count=2 cpu"
    assert sorted(result.stdout.splitlines()) == [f"[{i}] " + expected.format(i=i) for i in range(3)]


def test_local_stops_the_others_when_one_fails():
    fail_or_hang = "import os, sys, time; print('up'); time.sleep(60) if os.environ['SCALING_PROCESS_ID'] == '0' else 0"
    begin = time.monotonic()
    result = python(["-m", "launch.local", "--num_processes", "2", "--", sys.executable, "-c", fail_or_hang + "; 1/0"])
    assert result.returncode == 1
    assert time.monotonic() - begin < 30
    assert "[1] up" in result.stdout.splitlines()
    assert "[1] ZeroDivisionError: division by zero" in result.stderr.splitlines()
    assert "process 1 exited with status 1" in result.stderr


@pytest.mark.parametrize(
    "args, flag",
    [
        (["launch.local", "--num_processes", "0", "--", "true"], "--num_processes"),
        (["launch.local", "--devices_per_process", "two", "--", "true"], "--devices_per_process"),
        (["launch.local", "--num_processes", "2"], "command"),
        (["launch.local", "--num_processes", "2", "--"], "command"),
        (["launch.local", "--", "no-such-program-xyz"], "command"),
        (["launch.slurm", "--time", "1:00", "--nodes", "0", "--dry_run", "--", "true"], "--nodes"),
        (["launch.slurm", "--time", "soon", "--dry_run", "--", "true"], "--time"),
        (["launch.slurm", "--dry_run", "--", "true"], "--time"),
        (["launch.slurm", "--time", "1:00", "--job_name", "my job", "--dry_run", "--", "true"], "--job_name"),
        (["launch.slurm", "--time", "1:00", "--dry_run"], "command"),
        (["launch.tpu_pod", "--zone", "z", "--repo_dir", "r", "--dry_run", "--", "true"], "--tpu_name"),
        (["launch.tpu_pod", "--tpu_name", "t", "--zone", "z", "--repo_dir", "", "--dry_run", "--", "x"], "--repo_dir"),
        (["launch.tpu_pod", "--tpu_name", "t", "--zone", "z", "--repo_dir", "r", "--dry_run"], "command"),
        (["launch.tpu_pod", "--tpu_name", "t", "--zone", "z", "--repo_dir", "r", "--sync", "clone", "--dry_run",
          "--", "x"], "--repo_url"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, flag):
    result = python(["-m", *args])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and flag in result.stderr, result.stderr
    assert result.stdout == ""


def test_slurm_dry_run_prints_the_sbatch_script(tmp_path):
    out = tmp_path / "logs"
    flags = ["--nodes", "4", "--gpus_per_node", "8", "--partition", "gpu", "--time", "12:00:00"]
    flags += ["--job_name", "gpt-1e9", "--output_dir", str(out), "--dry_run"]
    command = ["python", "-m", "experiments.train", "--workdir", "runs/a b"]
    result = python(["-m", "launch.slurm", *flags, "--", *command])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = ["--job-name=gpt-1e9", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=12:00:00"]
    directives += ["--partition=gpu", f"--output={out}/%x-%j.out", "--requeue", "--signal=B:TERM@300"]
    assert [line for line in lines if line.startswith("#SBATCH")] == [f"#SBATCH {d}" for d in directives]
    assert f"cd {shlex.quote(ROOT)}" in lines
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in lines
    assert "export SCALING_DISTRIBUTED=auto" in lines
    assert "srun --kill-on-bad-exit=1 python -m experiments.train --workdir 'runs/a b' &" in lines
    assert 'if [ "$status" -eq 143 ]; then scontrol requeue "$SLURM_JOB_ID"; fi' in lines
    assert not out.exists()


def test_slurm_script_requeues_a_run_stopped_by_sigterm(tmp_path):
    """The generated script, run by bash with stand-ins for srun and scontrol: SIGTERM to the script
    reaches the command, whose exit status 143 requeues the job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nshift\ntrap "exit 143" TERM\nsleep 30 & wait $!\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/requeued\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    result = python(["-m", "launch.slurm", "--time", "1:00", "--dry_run", "--", "train"])
    script = tmp_path / "job.sbatch"
    script.write_text(result.stdout)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42"}
    job = subprocess.Popen(["bash", str(script)], env=env)
    time.sleep(1.0)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == 143
    assert (tmp_path / "requeued").read_text().split() == ["requeue", "42"]


def test_slurm_leaves_out_an_unset_partition():
    result = python(["-m", "launch.slurm", "--time", "1:00", "--dry_run", "--", "true"])
    assert result.returncode == 0 and "#SBATCH --nodes=1" in result.stdout and "--partition" not in result.stdout


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
    flags = ["--tpu_name", "pod", "--zone", "us-east5-a", "--project", "proj", "--repo_dir", "~/my repo"]
    command = ["python", "-m", "experiments.train", "--workdir", "gs://bucket/run 1"]
    result = python(["-m", "launch.tpu_pod", *flags, "--setup", "--dry_run", "--", *command])
    assert result.returncode == 0, result.stderr
    pack, copy, unpack, setup, train = [shlex.split(line) for line in result.stdout.splitlines()]
    assert pack[:2] == ["sh", "-c"] and "git ls-files -z | tar" in pack[2]
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone", "us-east5-a", "--project", "proj", "--worker=all"]
    assert copy == [*gcloud, "scp", "/tmp/scaling-src.tar.gz", "pod:/tmp/scaling-src.tar.gz", *where]
    assert unpack[:-1] == setup[:-1] == train[:-1] == [*gcloud, "ssh", "pod", *where, "--command"]
    assert unpack[-1] == "mkdir -p ~/'my repo' && tar -xzf /tmp/scaling-src.tar.gz -C ~/'my repo'"
    assert setup[-1] == f"cd ~/'my repo' && pip install -e '.[data]' 'jax[tpu]=={jax.__version__}'"
    assert shlex.split(train[-1]) == ["cd", "~/my repo", "&&", "SCALING_DISTRIBUTED=auto", *command]


def test_tpu_pod_clones_or_uses_the_repository_in_place():
    flags = ["--tpu_name", "t", "--zone", "z", "--repo_dir", "/srv/repo", "--dry_run"]
    result = python(["-m", "launch.tpu_pod", *flags, "--sync", "none", "--", "true"])
    command = "'cd /srv/repo && SCALING_DISTRIBUTED=auto true'"
    assert result.stdout.splitlines() == [f"gcloud compute tpus tpu-vm ssh t --zone z --worker=all --command {command}"]
    cloned = python(["-m", "launch.tpu_pod", *flags, "--sync", "clone", "--repo_url", "https://example.org/s.git",
                     "--revision", "v1", "--", "true"])
    clone = shlex.split(cloned.stdout.splitlines()[0])[-1]
    assert clone == ("(git -C /srv/repo fetch origin || git clone https://example.org/s.git /srv/repo) "
                     "&& git -C /srv/repo checkout v1")
