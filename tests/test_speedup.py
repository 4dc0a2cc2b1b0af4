"""experiments.speedup end to end on a tiny model, its bad-input handling, and the report helpers."""
import json
import os

import numpy as np
import pytest
from test_cli import assert_usage_error, run

from scaling import analysis
from scaling import report as report_module

TINY = ["--d_model", "32", "--n_layers", "1", "--n_heads", "2", "--seq_len", "32", "--batch_size", "8",
        "--data", "synthetic", "--tokens", str(30 * 8 * 32), "--eval_every", "5", "--timing_rounds", "1"]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--baseline", "gpt", "--variant", "gpt"], "--variant"),
        (["--variant", "nosuch"], "--variant"),
        (["--baseline", "nosuch"], "--baseline"),
        (["--eval_every", "10"], "--tokens"),
        (["--sweep_lrs", ""], "--sweep_lrs"),
        (["--sweep_lrs", "1e-3,-1e-2"], "--sweep_lrs"),
        (["--seeds", "0"], "--seeds"),
        (["--device_memory_gib", "-1"], "--device_memory_gib"),
        (["--learning_rate", "1e-2"], "--learning_rate"),  # used only with --nolr_sweep: refused, not ignored
        (["--nolr_sweep", "--sweep_lrs", "1e-2,3e-2"], "--sweep_lrs"),
        (["--arch", "ngpt"], "--arch"),
        (["--baseline_options", "nosuch=1"], "--baseline_options"),
        (["--variant_options", "n_layers"], "--variant_options"),
        (["--variant_options", "num_experts=8"], "--variant_options"),
        (["--variant_options", "n_layers=two"], "--variant_options"),
        (["--variant", "gpt", "--variant_options", "n_layers=1"], "--variant"),
        (["--variant_options", "seq_len=64"], "--variant_options"),
    ],
    ids=["same", "unknown-variant", "unknown-baseline", "too-few-evals", "empty-sweep", "negative-lr", "no-seeds",
         "negative-memory", "unused-lr", "unused-sweep", "unused-arch", "unknown-option", "no-value",
         "option-of-another-arch", "bad-value", "same-options", "own-seq-len"],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, flag):
    workdir = tmp_path / "speedup"
    assert_usage_error(run("experiments.speedup", *TINY, *args, "--workdir", str(workdir)), flag)
    assert not workdir.exists()


def test_runs_are_fitted_to_the_device_memory_given(tmp_path):
    """--device_memory_gib reaches every run's fitting: too little for its least-memory setting is the
    fitting's one line, before anything trains."""
    workdir = tmp_path / "speedup"
    result = run("experiments.speedup", *TINY, "--nolr_sweep", "--device_memory_gib", "1e-6", "--workdir", str(workdir))
    assert_usage_error(result, "--batch_size")
    assert "run gpt-lr0.003 needs" in result.stderr and not list(workdir.glob("runs/*/metrics.jsonl"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-point LR sweep per side, run twice (the second time resumes from finished runs)."""
    workdir = tmp_path_factory.mktemp("speedup")
    args = [*TINY, "--sweep_lrs", "3e-3,1e-2", "--workdir", str(workdir)]
    first = run("experiments.speedup", *args)
    assert first.returncode == 0, first.stderr
    metrics = sorted(workdir.glob("runs/*/metrics.jsonl"))
    stamps = [os.stat(p).st_mtime_ns for p in metrics]
    second = run("experiments.speedup", *args)
    assert second.returncode == 0, second.stderr
    return workdir, metrics, stamps


def test_writes_curves_and_plot_and_resumes_without_retraining(finished):
    workdir, metrics, stamps = finished
    assert [p.parent.name for p in metrics] == ["gpt-lr0.003", "gpt-lr0.01", "ngpt-lr0.003", "ngpt-lr0.01"]
    assert [os.stat(p).st_mtime_ns for p in metrics] == stamps
    assert (workdir / "speedup.png").stat().st_size > 10_000
    report = json.loads((workdir / "curves.json").read_text())
    for side in ("baseline", "variant"):
        sweep = report[side]["sweep"]
        assert set(sweep) == {"0.003", "0.01"}
        assert report[side]["final_eval_loss"] == min(sweep.values())
    assert report["setup"]["steps"] == 30 and len(report["steps"]["steps"]) == 6
    assert report["per_step_time"]["baseline_s"] > 0 and report["per_step_time"]["variant_s"] > 0


def test_seeds_compare_mean_curves_and_report_the_difference_per_seed(tmp_path):
    workdir = tmp_path / "speedup"
    result = run("experiments.speedup", *TINY, "--nolr_sweep", "--learning_rate", "1e-2", "--seeds", "2", "--seed", "3",
                 "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == [
        "gpt-lr0.01-seed3", "gpt-lr0.01-seed4", "ngpt-lr0.01-seed3", "ngpt-lr0.01-seed4"]
    report = json.loads((workdir / "curves.json").read_text())
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in (workdir / "runs").iterdir()}
    finals = {name: s["final_eval_loss"] for name, s in summaries.items()}
    difference = report["difference"]
    assert report["setup"]["seeds"] == difference["seeds"] == [3, 4]
    assert difference["per_seed"] == pytest.approx([finals[f"ngpt-lr0.01-seed{s}"] - finals[f"gpt-lr0.01-seed{s}"]
                                                    for s in (3, 4)])
    baseline = (finals["gpt-lr0.01-seed3"] + finals["gpt-lr0.01-seed4"]) / 2
    assert report["baseline"]["final_eval_loss"] == pytest.approx(baseline)
    seeds = [analysis.eval_curve(analysis.load_metrics(workdir / "runs" / f"gpt-lr0.01-seed{s}")) for s in (3, 4)]
    np.testing.assert_allclose(report["steps"]["baseline"]["losses"], (seeds[0][1] + seeds[1][1]) / 2, rtol=1e-6)
    section = report_module.speedup_section(str(workdir))
    assert "| seed | gpt | ngpt | difference (final_eval_loss) |" in section and "(sd " in section


def test_options_of_one_side_make_an_ablation(tmp_path):
    workdir = tmp_path / "speedup"
    result = run("experiments.speedup", *TINY, "--nolr_sweep", "--learning_rate", "1e-2", "--baseline", "gpt",
                 "--variant", "gpt", "--variant_options", "n_layers=2, remat=full", "--microbatches", "2",
                 "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (workdir / "runs").iterdir())
    assert names == ["gpt-lr0.01", "gpt-n_layers=2-remat=full-lr0.01"]
    models = {name: json.loads((workdir / "runs" / name / "config.json").read_text())["model"] for name in names}
    assert [models[name]["n_layers"] for name in names] == [1, 2]
    assert [models[name]["remat"] for name in names] == ["none", "full"]
    report = json.loads((workdir / "curves.json").read_text())
    assert report["variant"]["options"] == {"n_layers": 2, "remat": "full"} and report["baseline"]["options"] == {}
    assert report["variant"]["params"] > report["baseline"]["params"]
    timed = report["per_step_time"]["timed"]  # the steps the runs trained with
    assert timed == {"baseline": {"remat": "none", "microbatches": 2}, "variant": {"remat": "full", "microbatches": 2}}
    section = report_module.speedup_section(str(workdir))
    assert "| variant | gpt (n_layers=2, remat=full) |" in section and "| baseline | gpt |" in section


def test_speedup_points_follow_the_definition(finished):
    report = json.loads((finished[0] / "curves.json").read_text())
    curve = report["steps"]
    base = curve["baseline"]
    for s, target, match, speedup in zip(curve["steps"], curve["variant"]["smoothed"],
                                         curve["baseline_steps_to_match"], curve["speedup"]):
        if speedup is None:  # undefined: the baseline never reached the variant's loss in its run
            assert match is None or s == 0
            assert target < min(base["smoothed"]) or target > base["smoothed"][0]
        else:
            assert speedup == pytest.approx(match / s)
            assert np.interp(match, base["steps"], base["smoothed"]) == pytest.approx(target, abs=1e-6)


def test_summary_of_a_constant_speedup():
    steps = np.arange(10, 1001, 10.0)
    loss = lambda s: 2.0 + 3.0 / np.sqrt(s)
    curve = analysis.speedup_curve(steps, loss(steps), steps, loss(3 * steps))
    summary = analysis.summarize_speedup(curve)
    assert summary["median_second_half"] is None and summary["defined_fraction"] == pytest.approx(0.33, abs=0.01)
    assert summary["max"] == pytest.approx(3.0, rel=1e-3)
    assert summary["last_defined_at"] == pytest.approx(330.0)
