"""Execute the analysis notebooks top to bottom on small fixture outputs and check what they print and save."""
import json
import math
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_analysis import loss_curve, write_run, write_speedup_workdir, write_sweep_workdir

from scaling import analysis

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ARCHS = ("gpt", "ngpt")
BUDGETS = (1e17, 1e18)


def vertex(arch, budget):
    """log10 of the optimal size built into the fixture losses."""
    return 6.0 + 0.5 * math.log10(budget / BUDGETS[0]) + 0.2 * ARCHS.index(arch)


def write_sweep(workdir, budget):
    """plan.json and results.jsonl for one budget: 5 sizes per arch, losses a parabola in log10 N."""
    workdir.mkdir()
    runs = []
    for arch in ARCHS:
        for i in range(5):
            n = 10 ** (vertex(arch, budget) - 1 + 0.5 * i)
            runs.append(dict(run_id=f"{arch}-{i}", arch=arch, budget=budget, params=n, nonembed_params=0.9 * n,
                             active_params=n, flops_per_token=6 * n, tokens=budget / (6 * n), steps=100,
                             seq_len=64, batch_size=8, final_train_loss=3.0,
                             final_eval_loss=3.0 + 0.25 * (math.log10(n) - vertex(arch, budget)) ** 2,
                             wall_s=1.0, flops_convention="6N+attn", data_fingerprint="fixture"))
    plan = {"budget": budget, "archs": list(ARCHS), "sizes": 5,
            "runs": [{k: r[k] for k in ("run_id", "arch", "params", "flops_per_token", "tokens", "steps")}
                     for r in runs]}
    (workdir / "plan.json").write_text(json.dumps(plan))
    (workdir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))


def execute(name, tmp_path, monkeypatch, **env) -> str:
    """Runs notebooks/<name> in tmp_path with the given environment; returns its printed text, after
    checking it was committed without outputs and saved every image it displayed under figures/."""
    for key, value in {"MPLBACKEND": "Agg", "SCALING_RESAMPLES": "30", **env}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs committed"
    install = nb.cells[1].source
    assert install.count("REPO_URL = ") == 1 and "OWNER" not in install
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=dict(os.environ))
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    images = sum("image/png" in out.get("data", {}) for out in outputs)
    saved = sorted((tmp_path / "figures").glob("*.png"))
    assert images == len(saved) and all(path.stat().st_size > 5000 for path in saved)
    return "".join(out.get("text", "") for out in outputs)


def test_isoflop_notebook_on_one_workdir_per_budget(tmp_path, monkeypatch):
    workdirs = [tmp_path / f"isoflop-{budget:.0e}" for budget in BUDGETS]
    for workdir, budget in zip(workdirs, BUDGETS):
        write_sweep(workdir, budget)
    text = execute("isoflop_analysis.ipynb", tmp_path, monkeypatch, SCALING_WORKDIRS=",".join(map(str, workdirs)))
    for arch in ARCHS:
        for budget in BUDGETS:
            assert f"optimum: n_opt={10 ** vertex(arch, budget):.3g} [" in text
        assert f"{arch}  power laws over C=1e+17..1e+18" in text
        assert "N_opt = " in text and "C^0.500" in text
        assert f"{arch}  L(N, D) = E + A/N^alpha + B/D^beta" in text
    names = [path.name for path in sorted((tmp_path / "figures").glob("*.png"))]
    assert names == ["isoflop.png", "parametric.png", "power_law.png"]
    assert not (workdirs[0] / "isoflop.png").exists()


def test_isoflop_notebook_on_a_multi_budget_multi_seed_sweep(tmp_path, monkeypatch):
    rows = write_sweep_workdir(tmp_path / "sweep")
    text = execute("isoflop_analysis.ipynb", tmp_path, monkeypatch, SCALING_WORKDIRS=str(tmp_path / "sweep"))
    assert f"diverged, left out of the fit: {rows[3]['run_id']}" in text
    assert "mean over seeds, spread min..max over seeds" in text
    for arch in ARCHS:
        for budget in ("1e+17", "1e+18", "1e+19"):
            assert f"{arch}  C={budget}" in text
        assert f"{arch}  power laws over C=1e+17..1e+19 (3 budgets; intervals: 2.5..97.5 percentiles of 30" in text
    assert text.count("N_opt ~ C^") == 2
    assert [path.name for path in sorted((tmp_path / "figures").glob("*.png"))] == [
        "isoflop.png", "parametric.png", "power_law.png"]


@pytest.mark.parametrize("source", ["curves.json", "two runs"])
def test_speedup_notebook(tmp_path, monkeypatch, source):
    if source == "curves.json":
        write_speedup_workdir(tmp_path / "speedup")
        env = {"SCALING_SPEEDUP_WORKDIR": str(tmp_path / "speedup")}
        summary = analysis.load_curves(tmp_path / "speedup")["summary"]
        assert summary["steps"]["last_defined"] == pytest.approx(2.0) and summary["wall"]["last_defined"] == pytest.approx(2 / 1.2)
    else:
        runs = [tmp_path / "runs" / "gpt", tmp_path / "runs" / "ngpt"]
        write_run(runs[0], loss_curve, 0.1)
        write_run(runs[1], lambda s: loss_curve(2 * s), 0.15)  # 2x fewer steps, 1.5x slower steps
        env = {"SCALING_RUNS": ",".join(map(str, runs))}
        summary = analysis.speedup_from_runs(*runs, smooth=0.2)["summary"]  # the notebook's SMOOTH
        assert summary["steps"]["last_defined"] == pytest.approx(2.0, rel=0.01)
        assert summary["wall"]["last_defined"] == pytest.approx(2 / 1.5, rel=0.01)
    text = execute("speedup_curves.ipynb", tmp_path, monkeypatch, **env)
    assert text == "\n".join(analysis.format_speedup_headlines(summary)) + "\n"
    assert [path.name for path in (tmp_path / "figures").glob("*.png")] == ["speedup_curves.png"]
