"""The accelerator suite runs every section end to end (at toy sizes, on the CPU) so that it cannot rot."""
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
    assert all(row["tokens_per_s"] > 0 for row in rows if row["section"] != "kernel")
    assert all(isinstance(row["forward_backward_ms"], float) for row in rows if row["section"] == "kernel")
    table = (tmp_path / "suite.md").read_text()
    assert all(f"### {section}" in table for section in sections)
