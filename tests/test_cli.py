"""Entry points as a user runs them: bad input is one line on stderr, exit status 2, nothing written."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, command_env
from conftest import run_command as run


def assert_usage_error(result, flag):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--budget", "nan"], "--budget"),
        (["--budget", "-5"], "--budget"),
        (["--budget", "abc"], "--budget"),
        (["--budget", "1e9"], "--budget"),
        (["--budget", "1e13", "--archs", "gpt,nosuch"], "--archs"),
        (["--budget", "1e13", "--data", "nosuch"], "--data"),
        (["--budget", "1e13", "--data", "tfds:scaling_no_such_dataset"], "--data"),  # data checked before writing
        (["--budget", "1e13", "--seq_len", "128", "--data_tokens", "2000"], "--data_tokens"),
        (["--budget", "1e13", "--seq_len", "128", "--vocab_size", "100"], "--vocab_size"),
        (["--budget", "1e13", "--mesh", "data=3"], "--mesh"),
        (["--budget", "1e13", "--archs", "switch", "--eval_capacity_factor", "0"], "--eval_capacity_factor"),
        (["--budget", "1e13", "--x_axis", "size"], "--x_axis"),
        (["--budgets", "3e12,3e12"], "--budgets"),
        (["--budget", "1e13", "--seeds", "0"], "--seeds"),
        (["--budget", "1e13", "--lr_search", "2"], "--lr_search"),
        (["--budget", "1e13", "--tokens", "100000"], "--tokens"),  # chosen per run: refused, not ignored
        (["--budget", "1e13", "--d_model", "512"], "--d_model"),
    ],
)
def test_isoflop_bad_input(tmp_path, args, flag):
    workdir = tmp_path / "sweep"
    assert_usage_error(run("experiments.isoflop", *args, "--workdir", str(workdir)), flag)
    assert not workdir.exists()


@pytest.mark.parametrize("args, flag", [(["--b2", "1.0"], "--b2"), (["--tokens", "2000.5"], "--tokens"),
                                        (["--tokenizer", "spm:100"], "--tokenizer"),
                                        (["--data", "tfds:nope", "--data_dir", "/no/such/dir"], "--data_dir"),
                                        (["--seq_len", "64", "--data_tokens", "64"], "--data_tokens"),
                                        (["--seq_len", "64", "--data_tokens", "100"], "--data_tokens")])
def test_every_train_config_field_is_a_checked_flag(tmp_path, args, flag):
    assert_usage_error(run("experiments.train", *args, "--workdir", str(tmp_path / "run")), flag)
    assert not (tmp_path / "run").exists()


def test_mesh_that_does_not_divide_heads(tmp_path):
    result = run("experiments.train", "--d_model", "128", "--n_heads", "2", "--mesh", "data=1,model=8",
                 "--workdir", str(tmp_path / "run"), devices=8)
    assert_usage_error(result, "--mesh")
    assert not (tmp_path / "run").exists()


def test_isoflop_refuses_a_workdir_with_another_plan(tmp_path):
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    (workdir / "plan.json").write_text(json.dumps({"budget": 1.0, "runs": []}))
    result = run("experiments.isoflop", "--budget", "2e12", "--seq_len", "64", "--data", "synthetic",
                 "--workdir", str(workdir))
    assert_usage_error(result, "--workdir")
    assert json.loads((workdir / "plan.json").read_text()) == {"budget": 1.0, "runs": []}
    assert sorted(os.listdir(workdir)) == ["plan.json"]


def test_isoflop_dry_run_prints_an_estimated_plan(tmp_path):
    result = run("experiments.isoflop", "--budget", "1e17", "--seq_len", "256", "--dry_run", "--workdir",
                 str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    assert "total estimated wall time" in result.stdout and "WARNING" in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.startswith("gpt-")]) == 7
    assert not (tmp_path / "sweep").exists()


def test_bench_json_reports_throughput_and_the_ratio_to_the_first_arch():
    result = run("experiments.bench", "--arch", "gpt,switch", "--moe_every", "1", "--num_experts", "4",
                 "--group_size", "32", "--d_model", "64", "--n_layers", "1", "--n_heads", "1", "--seq_len", "32",
                 "--batch_size", "4", "--steps", "2", "--warmup", "1", "--unroll_layers", "--json")
    assert result.returncode == 0, result.stderr
    gpt, switch = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert gpt["arch"] == "gpt" and gpt["tokens_per_s"] > 0 and gpt["tflops_per_device"] > 0 and gpt["mfu"] is None
    assert (gpt["d_model"], gpt["n_layers"], gpt["seq_len"], gpt["batch_size"]) == (64, 1, 32, 4)
    assert gpt["step_ratio"] == 1.0
    assert switch["step_ratio"] == pytest.approx(switch["step_s"] / gpt["step_s"])
    assert switch["params"] > switch["active_params"] > gpt["params"]


@pytest.mark.parametrize("flag", ["workdir", "compilation_cache"])
def test_bench_has_no_flags_it_would_ignore(flag):
    """bench writes nothing and keeps no compiled steps: those flags are unknown to it, not ignored."""
    assert_usage_error(run("experiments.bench", f"--{flag}", "x"), f"flag '{flag}'")


def test_a_command_imports_matplotlib_and_scipy_optimize_only_to_draw_or_fit():
    """They take ~2 s to import, which a command answering bad input should not spend."""
    code = "import sys, experiments.isoflop; print([m for m in ('matplotlib', 'scipy.optimize') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=command_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
