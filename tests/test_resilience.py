"""Pod readiness: divergence stops a run cleanly, SIGTERM checkpoints and resumes to the same end
(loading its compiled train step rather than compiling it again), and every shared file goes through
etils.epath, which serves gs:// (tested against a Google Cloud Storage server run locally)."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import command_env
from test_cli import REPO, assert_usage_error

from scaling import sweep
from scaling.config import MeshConfig, ModelConfig, TrainConfig
from scaling.data.sources import make_source
from scaling.train.loop import train
from scaling.train.metrics import MetricsLog

EXPLODING = dict(learning_rate=1e15, warmup_frac=0.0)


def strict_lines(path) -> list[dict]:
    """The JSON lines of a file, refusing NaN and Infinity (not JSON)."""
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    lines = pathlib.Path(path).read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines if line.strip()]


def test_divergence_stops_at_once_and_checkpoints_only_finite_state(tiny_model, tiny_train, tmp_path):
    run_dir = tmp_path / "run"
    cfg = dataclasses.replace(tiny_train, **EXPLODING, checkpoint_every=1)
    summary = train(tiny_model, cfg, MeshConfig(), str(run_dir))
    assert summary["status"] == "diverged" and not summary["complete"]
    step, last = summary["diverged"]["step"], summary["diverged"]["last_checkpoint"]
    assert summary["final_eval_loss"] is None and step < tiny_train.steps(tiny_model.seq_len)
    assert last == step - 1 and sorted(map(int, os.listdir(run_dir / "checkpoints")))[-1] == last
    restored = ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / str(last) / "default")
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(restored["params"]))
    assert all(record["step"] < step for record in strict_lines(run_dir / "metrics.jsonl"))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    assert train(tiny_model, cfg, MeshConfig(), str(run_dir)) == summary  # an ended run is not retrained


def test_train_entry_point_reports_divergence_in_one_line_and_exit_3(tmp_path):
    env = command_env()
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--d_model", "32", "--n_heads", "2", "--seq_len", "32",
         "--batch_size", "4", "--tokens", "2048", "--data", "synthetic", "--learning_rate", "1e15",
         "--warmup_frac", "0", "--workdir", str(tmp_path / "boom")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    *progress, last = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 3, result.stderr
    assert last.startswith("run boom diverged at step ") and "last finite checkpoint" in last
    assert all(line.startswith("boom: step ") for line in progress)  # the lines a log that is not a terminal gets


def test_a_sweep_goes_on_past_a_diverged_run_and_fits_without_it(tmp_path):
    plan = sweep.plan_sweep(2e12, [ModelConfig(seq_len=32)], 3, TrainConfig(data="synthetic"), batch_size=8)
    for run in plan["runs"]:
        run["train"].update(tokens=4 * 8 * 32, eval_every=2, eval_batches=1, log_every=2)
        run["tokens"], run["steps"] = 4 * 8 * 32, 4
    plan["runs"][1]["train"].update(EXPLODING)
    workdir = str(tmp_path / "sweep")
    sweep.write_plan(workdir, plan)
    logged = []
    fits = sweep.run_sweep(plan, workdir, MeshConfig(), log=logged.append)
    results = strict_lines(os.path.join(workdir, "results.jsonl"))
    assert [r["status"] for r in results] == ["complete", "diverged", "complete"]
    assert results[1]["final_eval_loss"] is None and any("diverged at step" in line for line in logged)
    assert fits == {}  # two finite sizes cannot make a parabola; the diverged one is not among the points


@pytest.fixture(scope="module")
def preemptible(tmp_path_factory):
    """The command of a run long enough to be stopped mid-way, and the directory of its uninterrupted twin."""
    root = tmp_path_factory.mktemp("preempt")
    args = ["--d_model", "32", "--n_heads", "2", "--seq_len", "32", "--batch_size", "8", "--tokens", str(400 * 8 * 32),
            "--data", "synthetic", "--eval_every", "400", "--log_every", "5", "--checkpoint_every", "1000"]
    env = command_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's shared cache: this run keeps its own, as users' runs do

    def command(name, *extra):
        return [sys.executable, "-m", "experiments.train", *args, *extra, "--workdir", str(root / name)]

    subprocess.run(command("whole", "--compilation_cache", "none"), cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=600)
    return root, command, env


def test_sigterm_saves_the_current_step_and_resuming_ends_like_the_uninterrupted_run(preemptible):
    root, command, env = preemptible
    process = subprocess.Popen(command("stopped"), cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    metrics = root / "stopped" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert process.returncode == 143 and len(lines) == 1 and "stopped at step" in lines[0], stderr
    stopped_at = int(lines[0].split("stopped at step ")[1].split()[0])
    assert 0 < stopped_at < 400 and max(map(int, os.listdir(root / "stopped" / "checkpoints"))) == stopped_at
    resuming = subprocess.run(command("stopped"), cwd=REPO, env={**env, "JAX_LOG_COMPILES": "1"}, check=True,
                              capture_output=True, text=True, timeout=600)
    assert "Persistent compilation cache hit for 'jit_train_step'" in resuming.stderr  # kept in the workdir
    assert "stopped: step 400/400, loss " in resuming.stderr  # its progress at each eval: stderr is not a terminal
    assert list((root / "stopped" / "compilation_cache").glob("cpu-*/jit_train_step-*"))
    assert not (root / "whole" / "compilation_cache").exists()  # --compilation_cache none
    whole, resumed = (json.loads((root / name / "summary.json").read_text()) for name in ("whole", "stopped"))
    assert resumed["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], rel=1e-5)
    a, b = (ocp.StandardCheckpointer().restore(root / name / "checkpoints" / "400" / "default")["params"]
            for name in ("whole", "stopped"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_sweep_files_and_metrics_go_through_epath(gcs_bucket):
    from etils import epath

    workdir = f"{gcs_bucket.url}/sweep"
    plan = sweep.plan_sweep(2e12, [ModelConfig(seq_len=32)], 3, TrainConfig(data="synthetic"), batch_size=8)
    sweep.write_plan(workdir, plan)
    sweep.check_workdir(workdir, plan)
    for i, run in enumerate(plan["runs"]):
        summary = {"tokens": 1, "steps": 1, "final_train_loss": 2.0, "final_eval_loss": 2.0 + (i - 1) ** 2 / 10,
                   "final_eval_causal_loss": None, "final_eval_bpb": None, "status": "complete", "wall_s": 1.0,
                   "data_fingerprint": "synthetic"}
        sweep.append_result(workdir, sweep.result_record(run, summary))
    fits = sweep.finish(workdir)
    root = epath.Path(workdir)
    assert not os.path.exists("gs:") and not os.path.exists("/gs")  # nothing went to a local directory
    assert json.loads((root / "fits.json").read_text()) == json.loads(json.dumps(fits)) and fits["gpt"]
    assert (root / "isoflop.png").read_bytes()[:4] == b"\x89PNG"
    log = MetricsLog(root / "runs" / "a" / "metrics.jsonl")
    log.write({"step": 1, "loss": float("nan")})
    log.write({"step": 2, "loss": 1.0})
    assert log.read() == []  # held: an object store takes about one write per second to an object
    log.flush()
    assert [r["loss"] for r in log.read()] == [None, 1.0]
    log.FLUSH_S = 0.0
    log.write({"step": 3, "loss": 0.5})  # its interval has passed: written at once
    assert [r["step"] for r in log.read()] == [1, 2, 3] and log.truncate_after(1) == [{"step": 1, "loss": None}]


def test_tfds_data_is_read_from_a_bucket(gcs_bucket, tfds_text):
    """The pod's data path (--data tfds:NAME --data_dir gs://...): the same records as from a local disk,
    the 300 training documents in a few requests (each read alone, as tfds.data_source reads them: 301)."""
    from etils import epath

    local, bucket = pathlib.Path(tfds_text.data_dir), epath.Path(gcs_bucket.url) / "tensorflow_datasets"
    for path in local.rglob("*"):
        if path.is_file():
            (bucket / str(path.relative_to(local))).write_bytes(path.read_bytes())
    for split in ("train", "eval"):
        logged = len(gcs_bucket.log.read_text().splitlines())
        sources = [make_source(tfds_text.name, split, 32, data_dir=str(data_dir)) for data_dir in (local, bucket)]
        reads = [line for line in gcs_bucket.log.read_text().splitlines()[logged:] if ".array_record-" in line]
        assert 0 < len(reads) <= 4, reads  # the file's footer and index, then its documents
        assert len(sources[0]) == len(sources[1]) > 0
        np.testing.assert_array_equal(*(np.stack([source[i] for i in range(len(source))]) for source in sources))


def test_a_run_on_gcs_checkpoints_there_and_resumes_to_the_same_end(gcs_bucket):
    """experiments.train --workdir gs://...: config, metrics, checkpoints (orbax through tensorstore),
    compiled steps and summary in the bucket; preempted after its first checkpoint (the later one and
    the summary never written), the same command resumes from the bucket to the same end."""
    from etils import epath

    from experiments.sample import load_params

    workdir = f"{gcs_bucket.url}/run"
    command = [sys.executable, "-m", "experiments.train", "--d_model", "32", "--n_heads", "2", "--seq_len", "32",
               "--batch_size", "8", "--tokens", str(40 * 8 * 32), "--data", "synthetic", "--eval_every", "20",
               "--checkpoint_every", "20", "--workdir", workdir]
    env = command_env()
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the suite's shared cache: this run keeps its own, in the bucket
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    root = epath.Path(workdir)
    whole = json.loads((root / "summary.json").read_text())
    assert sorted(path.name for path in (root / "checkpoints").iterdir()) == ["20", "40"]
    assert [path.name for path in (root / "compilation_cache").iterdir()][0].startswith("cpu-")
    (root / "summary.json").unlink()
    (root / "checkpoints" / "40").rmtree()
    resumed = subprocess.run(command, cwd=REPO, env={**env, "JAX_LOG_COMPILES": "1"}, check=True,
                             capture_output=True, text=True, timeout=600)
    assert "Persistent compilation cache hit for 'jit_train_step'" in resumed.stderr
    assert "run: step 40/40, loss " in resumed.stderr and "run: step 20/40" not in resumed.stderr  # from step 20
    summary = json.loads((root / "summary.json").read_text())
    assert summary["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], rel=1e-5)
    steps = [record["step"] for record in MetricsLog(root / "metrics.jsonl").read()]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # the records after step 20 replaced, not repeated
    model_cfg, params, tokenizer = load_params(workdir)  # experiments.sample's restore
    assert model_cfg.d_model == 32 and tokenizer is None and jax.tree.leaves(params)


def test_bad_device_memory_is_one_line(tmp_path):
    from test_cli import run

    assert_usage_error(run("experiments.train", "--device_memory_gib", "-1", "--workdir", str(tmp_path / "r")),
                       "--device_memory_gib")
    assert not (tmp_path / "r").exists()
