"""Tests for scaling.analysis: loading, isoFLOP and power-law fits, speedup curves, plots, table."""
import json
import math

import numpy as np
import pytest

from scaling import analysis

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parabola_points(sizes, vertex=7.0, curvature=0.3, floor=3.0, **extra):
    """Result records whose final eval loss is an exact parabola in log10(params)."""
    return [dict(params=float(n), final_eval_loss=curvature * (math.log10(n) - vertex) ** 2 + floor, **extra)
            for n in sizes]


def sweep_results(archs=("gpt", "ngpt"), budgets=(1e17, 1e18), num_sizes=5):
    """A synthetic sweep: the optimum grows with the budget and differs per arch."""
    rows = []
    for arch_index, arch in enumerate(archs):
        for budget in budgets:
            vertex = 6.0 + 0.5 * math.log10(budget / budgets[0]) + 0.1 * arch_index
            for i, n in enumerate(np.logspace(vertex - 1, vertex + 1, num_sizes)):
                row = parabola_points([n], vertex=vertex)[0]
                row.update(run_id=f"{arch}-{budget:.0e}-{i}", arch=arch, budget=budget, tokens=budget / (6 * n))
                rows.append(row)
    return rows


def write_jsonl(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_load_results_skips_blank_and_truncated_last_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_jsonl(a / "results.jsonl", [{"run_id": "r1"}, {"run_id": "r2"}], tail='\n{"run_id": "r3", "ar')
    write_jsonl(b / "results.jsonl", [{"run_id": "r4"}])
    assert [r["run_id"] for r in analysis.load_results(a, b)] == ["r1", "r2", "r4"]


def test_load_results_rejects_corrupt_middle_line(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"run_id": "r1"}\n{oops\n{"run_id": "r2"}\n')
    with pytest.raises(ValueError, match=":2:"):
        analysis.load_results(tmp_path)


def test_load_metrics_and_eval_curve(tmp_path):
    rows = [{"step": s, "tokens": 8 * s, "flops": 1e9 * s, "loss": 5.0 - s / 10, "wall_s": 0.5 * s,
             "eval_loss": (4.0 - s / 10) if s % 2 == 0 else None} for s in range(1, 7)]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    metrics = analysis.load_metrics(tmp_path)
    assert len(metrics) == 6
    steps, losses = analysis.eval_curve(metrics)
    np.testing.assert_allclose(steps, [2, 4, 6])
    np.testing.assert_allclose(losses, [3.8, 3.6, 3.4])
    seconds, _ = analysis.eval_curve(metrics, x_key="wall_s")
    np.testing.assert_allclose(seconds, [1.0, 2.0, 3.0])


def test_fit_recovers_exact_vertex():
    fit = analysis.fit_isoflop(parabola_points(np.logspace(6, 8, 7)))
    assert fit["has_minimum"]
    assert fit["n_opt"] == pytest.approx(1e7, rel=1e-9)
    assert fit["loss_min"] == pytest.approx(3.0, abs=1e-12)
    np.testing.assert_allclose(fit["coeffs"], [0.3, -4.2, 17.7], rtol=1e-9)
    assert fit["points"] == 7 and fit["x_key"] == "params"
    json.dumps(fit)


def test_robust_fit_resists_an_outlier():
    points = parabola_points(np.logspace(6, 8, 7))
    points[4]["final_eval_loss"] += 0.5
    plain = analysis.fit_isoflop(points)
    robust = analysis.fit_isoflop(points, robust=True)
    assert abs(math.log10(plain["n_opt"]) - 7.0) > 0.1
    assert robust["n_opt"] == pytest.approx(1e7, rel=0.01)
    assert robust["loss_min"] == pytest.approx(3.0, abs=1e-3)


def test_concave_data_has_no_minimum():
    fit = analysis.fit_isoflop(parabola_points(np.logspace(6, 8, 5), curvature=-0.2))
    assert fit["has_minimum"] is False
    assert fit["n_opt"] is None and fit["loss_min"] is None


def test_fewer_than_three_sizes_raises():
    points = parabola_points([1e6, 1e6, 1e7, 1e7]) + parabola_points([1e8])
    points[-1]["final_eval_loss"] = float("nan")
    with pytest.raises(ValueError, match=">= 3 distinct 'params'"):
        analysis.fit_isoflop(points)


def test_fit_sweep_groups_by_arch_and_budget_and_skips_incomplete_groups():
    results = sweep_results() + [dict(run_id="mod-0", arch="mod", budget=1e17, params=1e6, tokens=1e9,
                                      final_eval_loss=3.0)]
    fits = analysis.fit_sweep(results)
    assert sorted(fits) == ["gpt", "ngpt"]
    assert list(fits["gpt"]) == ["1e+17", "1e+18"]
    assert fits["gpt"]["1e+18"]["n_opt"] == pytest.approx(10**6.5, rel=1e-6)
    assert fits["ngpt"]["1e+17"]["n_opt"] == pytest.approx(10**6.1, rel=1e-6)


def test_power_law_recovers_exponent():
    budgets = np.array([1e17, 1e18, 1e19, 1e20])
    law = analysis.fit_power_law(budgets, 0.09 * budgets**0.49)
    assert law["exponent"] == pytest.approx(0.49, abs=1e-9)
    assert law["coefficient"] == pytest.approx(0.09, rel=1e-6)
    with pytest.raises(ValueError):
        analysis.fit_power_law([1e18], [1e6])


def test_fit_scaling_laws_across_budgets():
    laws = analysis.fit_scaling_laws(analysis.fit_sweep(sweep_results(budgets=(1e17, 1e18, 1e19))))
    assert laws["gpt"]["power_law"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    assert laws["gpt"]["budgets"] == [1e17, 1e18, 1e19]


def loss_curve(steps):
    """A smooth, decreasing training curve."""
    return 2.0 + 5.0 / np.sqrt(1.0 + np.asarray(steps, dtype=float) / 200.0)


@pytest.mark.parametrize("k, rel", [(2.0, 1e-9), (2.5, 1e-2)])
def test_speedup_recovers_constant_factor(k, rel):
    base = np.arange(0, 10001, 10)
    var = np.arange(0, 6001, 10)
    curve = analysis.speedup_curve(base, loss_curve(base), var, loss_curve(k * var))
    defined = [(s, v) for s, v in zip(curve["steps"], curve["speedup"]) if v is not None]
    assert [s for s, _ in defined] == [s for s in var if 0 < s and k * s <= 10000]
    np.testing.assert_allclose([v for _, v in defined], k, rtol=rel)


def test_speedup_is_undefined_where_baseline_never_reaches_the_loss():
    base = np.arange(0, 1001, 10)
    var = np.arange(0, 1001, 10)
    curve = analysis.speedup_curve(base, loss_curve(base), var, loss_curve(3 * var))
    for s, match, speedup in zip(curve["steps"], curve["baseline_steps_to_match"], curve["speedup"]):
        if 3 * s > 1000 or s == 0:
            assert speedup is None and (match is None or s == 0)
        else:
            assert speedup == pytest.approx(3.0, rel=1e-3)
    assert curve["speedup"][-1] is None


def test_speedup_with_noise_and_smoothing():
    rng = np.random.default_rng(0)
    base = np.arange(0, 10001, 10)
    var = np.arange(0, 5001, 10)
    curve = analysis.speedup_curve(base, loss_curve(base) + rng.normal(0, 0.01, base.size),
                                   var, loss_curve(2 * var) + rng.normal(0, 0.01, var.size), smooth=0.9)
    late = [v for s, v in zip(curve["steps"], curve["speedup"]) if s >= 1000 and v is not None]
    assert np.median(late) == pytest.approx(2.0, rel=0.05)
    assert np.all(np.diff(curve["baseline"]["smoothed"]) <= 0)


def test_speedup_in_wall_clock_seconds():
    steps = np.arange(0, 4001, 10)
    base_seconds, var_seconds = 0.1 * steps, 0.2 * steps  # the variant is 2x slower per step
    curve = analysis.speedup_curve(base_seconds, loss_curve(steps), var_seconds, loss_curve(3 * steps))
    defined = [v for v in curve["speedup"] if v is not None]
    np.testing.assert_allclose(defined, 1.5, rtol=1e-3)


def test_isoflop_plot_and_power_law_plot_write_pngs(tmp_path):
    results = sweep_results()
    fits = analysis.fit_sweep(results)
    for path, draw in ((tmp_path / "isoflop.png", lambda p: analysis.plot_isoflop(results, fits, p)),
                       (tmp_path / "law.png", lambda p: analysis.plot_power_law(analysis.fit_scaling_laws(fits), p))):
        draw(path)
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_speedup_plot_writes_png(tmp_path):
    base = np.arange(0, 2001, 10)
    var = np.arange(0, 2001, 10)
    curve = analysis.speedup_curve(base, loss_curve(base), var, loss_curve(2 * var))
    path = tmp_path / "speedup.png"
    analysis.plot_speedup({"ngpt": curve}, path)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_mixtures_of_experts_fit_against_active_params():
    results = sweep_results(archs=("switch",), budgets=(1e17,))
    for row in results:
        row["active_params"] = row["params"] / 8  # a token uses one expert of eight
    by_total, by_active = analysis.fit_sweep(results), analysis.fit_sweep(results, "active_params")
    total, active = by_total["switch"]["1e+17"], by_active["switch"]["1e+17"]
    assert active["n_opt"] == pytest.approx(total["n_opt"] / 8, rel=1e-6)
    assert active["loss_min"] == pytest.approx(total["loss_min"])
    table = analysis.format_table(results, by_active)
    assert f"optimum: n_opt={active['n_opt']:.3g} active_params" in table
    assert f"{results[0]['params']:>10.3g}  {results[0]['active_params']:>10.3g}" in table


def test_table_mentions_every_run_and_the_optimum():
    results = sweep_results()
    results.append(dict(run_id="mod-lonely", arch="mod", budget=1e17, params=1e6, tokens=1e9, final_eval_loss=None))
    table = analysis.format_table(results, analysis.fit_sweep(results))
    for row in results:
        assert row["run_id"] in table
    assert "optimum: n_opt=3.16e+06" in table
    assert "no fit" in table
