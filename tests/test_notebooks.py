"""Execute the analysis notebook on a small fixture sweep."""
import json
import math
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "isoflop_analysis.ipynb"
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


def test_isoflop_notebook_runs_on_fixture_sweep(tmp_path, monkeypatch):
    workdirs = [tmp_path / f"isoflop-{budget:.0e}" for budget in BUDGETS]
    for workdir, budget in zip(workdirs, BUDGETS):
        write_sweep(workdir, budget)
    monkeypatch.setenv("SCALING_WORKDIRS", ",".join(map(str, workdirs)))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs committed"

    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=dict(os.environ))

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs)
    for arch in ARCHS:
        for budget in BUDGETS:
            assert f"optimum: n_opt={10 ** vertex(arch, budget):.3g}" in text
        assert f"{arch}: N_opt = " in text and "C^0.500" in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 2
    assert (tmp_path / "figures" / "isoflop.png").stat().st_size > 0 and not (workdirs[0] / "isoflop.png").exists()
