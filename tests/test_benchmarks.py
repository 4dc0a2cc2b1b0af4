"""The accelerator suite and the input-pipeline benchmark run end to end (at toy sizes, on the CPU) so
that they cannot rot."""
import json
import os
import subprocess
import sys

from conftest import command_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_suite_runs_every_section(tmp_path):
    env = command_env()
    result = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_suite", "--tiny", "--out", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    sections = {row["section"] for row in rows}
    assert sections == {"mfu", "archs", "context", "kernel"}
    archs = [row for row in rows if row["section"] == "archs"]
    assert archs[0]["arch"] == "gpt" and archs[0]["step_ratio"] == 1.0 and len(archs) >= 6
    assert {row["layers"] for row in rows if row["section"] == "mfu"} == {"looped (default)", "unrolled"}
    assert all(row["tokens_per_s"] > 0 for row in rows if row["section"] != "kernel")
    assert all(isinstance(row["forward_backward_ms"], float) for row in rows if row["section"] == "kernel")
    table = (tmp_path / "suite.md").read_text()
    assert all(f"### {section}" in table for section in sections)


def test_input_pipeline_benchmark_feeds_the_train_step(tmp_path):
    """The loader's batches go into the compiled step (sharding, dtypes and shapes agree) and both
    feeds are timed."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--tokenizers", "bytes", "--steps", "2",
                             "--seq_len", "64", "--batch_size", "4", "--fed_step", "--fed_rounds", "1", "--cache_dir",
                             str(tmp_path)], cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    loader, fed = (json.loads(line) for line in result.stdout.splitlines())
    assert loader["tokens_per_s_per_host"] > 0 and loader["bytes_per_token"] == 1.0
    assert fed["loader_step_s"] > 0 and fed["synthetic_step_s"] > 0 and fed["ratio"] > 0
