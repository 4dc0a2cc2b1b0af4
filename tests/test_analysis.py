"""Tests for scaling.analysis and the report: loading, seeds, isoFLOP fits, bootstrap intervals and power
laws, the parametric fit (approach 3), speedup curves, plots, tables, experiments.report."""
import json
import math

import numpy as np
import pytest
from test_cli import assert_usage_error, run

from scaling import analysis, report

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
                row.update(run_id=f"{arch}-{budget:.0e}-{i}", arch=arch, budget=budget, tokens=budget / (6 * n),
                           flops_per_token=6 * n)
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
    fits = analysis.fit_sweep(results, resamples=0)
    assert sorted(fits) == ["gpt", "ngpt"]
    assert list(fits["gpt"]) == ["1e+17", "1e+18", "power_law"]
    assert list(analysis.budget_fits(fits["gpt"])) == ["1e+17", "1e+18"]
    assert fits["gpt"]["1e+18"]["n_opt"] == pytest.approx(10**6.5, rel=1e-6)
    assert fits["ngpt"]["1e+17"]["n_opt"] == pytest.approx(10**6.1, rel=1e-6)


def test_power_law_recovers_exponent():
    budgets = np.array([1e17, 1e18, 1e19, 1e20])
    law = analysis.fit_power_law(budgets, 0.09 * budgets**0.49)
    assert law["exponent"] == pytest.approx(0.49, abs=1e-9)
    assert law["coefficient"] == pytest.approx(0.09, rel=1e-6)
    with pytest.raises(ValueError):
        analysis.fit_power_law([1e18], [1e6])


def test_power_laws_across_budgets():
    block = analysis.fit_sweep(sweep_results(budgets=(1e17, 1e18, 1e19)), resamples=0)["gpt"]["power_law"]
    assert block["n_opt_law"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    assert block["budgets"] == [1e17, 1e18, 1e19]
    # D_opt = C / (6 N_opt) here, so D_opt = C^0.5 / (6 a)
    assert block["d_opt_law"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    assert block["d_opt_law"]["coefficient"] == pytest.approx(1 / (6 * block["n_opt_law"]["coefficient"]), rel=1e-6)
    assert block["n_opt_law"]["exponent_ci"] is None and block["n_opt_law"]["band"] is None


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
    fits = analysis.fit_sweep(results, resamples=50)
    for path, draw in ((tmp_path / "isoflop.png", lambda p: analysis.plot_isoflop(results, fits, p)),
                       (tmp_path / "law.png", lambda p: analysis.plot_power_law(fits, p))):
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
    by_total, by_active = analysis.fit_sweep(results, resamples=0), analysis.fit_sweep(results, "active_params", resamples=0)
    total, active = by_total["switch"]["1e+17"], by_active["switch"]["1e+17"]
    assert active["n_opt"] == pytest.approx(total["n_opt"] / 8, rel=1e-6)
    assert active["loss_min"] == pytest.approx(total["loss_min"])
    table = analysis.format_table(results, by_active)
    assert f"optimum: n_opt={active['n_opt']:.3g} active_params" in table
    assert f"{results[0]['params']:>10.3g}  {results[0]['active_params']:>10.3g}" in table


def test_table_mentions_every_run_and_the_optimum():
    results = sweep_results()
    results.append(dict(run_id="mod-lonely", arch="mod", budget=1e17, params=1e6, tokens=1e9, final_eval_loss=None))
    table = analysis.format_table(results, analysis.fit_sweep(results, resamples=0))
    for row in results:
        assert row["run_id"] in table
    assert "optimum: n_opt=3.16e+06" in table
    assert "no fit" in table


def test_three_runs_at_three_sizes_get_no_interval_and_say_why():
    exact = sweep_results(archs=("gpt",), budgets=(1e17,), num_sizes=3)
    fit = analysis.fit_sweep(exact, resamples=50)["gpt"]["1e+17"]
    assert fit["n_opt_ci"] is None and fit["loss_min_ci"] is None  # every resample with a parabola is the sample
    assert "no intervals: 3 runs at 3 sizes" in analysis.format_table(exact, {"gpt": {"1e+17": fit}})
    noisy = [dict(r, final_eval_loss=r["final_eval_loss"] + 0.01 * (-1) ** i)
             for i, r in enumerate(sweep_results(archs=("gpt",), budgets=(1e17,), num_sizes=4))]
    lo, hi = analysis.fit_sweep(noisy, resamples=50)["gpt"]["1e+17"]["n_opt_ci"]
    assert lo < hi


# ----------------------------------------------------------------------------- seeds and diverged runs


def seeded(rows, offsets=(-0.02, 0.0, 0.05)):
    """Each row once per seed, its loss shifted by that seed's offset (so the seed mean is shifted by the mean)."""
    return [dict(r, run_id=f"{r['run_id']}-s{seed}", seed=seed, final_eval_loss=r["final_eval_loss"] + offset)
            for seed, offset in enumerate(offsets) for r in rows]


def test_seeds_are_averaged_and_their_spread_reported(tmp_path):
    base = sweep_results(archs=("gpt",), budgets=(1e17,))
    rows = seeded(base)
    points = analysis.aggregate_seeds(rows)
    assert [p["seeds"] for p in points] == [3] * 5
    first = points[0]
    assert first["final_eval_loss"] == pytest.approx(base[0]["final_eval_loss"] + 0.01)
    assert (first["min"], first["max"]) == pytest.approx((base[0]["final_eval_loss"] - 0.02, base[0]["final_eval_loss"] + 0.05))
    assert first["run_ids"] == [f"{base[0]['run_id']}-s{seed}" for seed in range(3)]

    fits = analysis.fit_sweep(rows, resamples=0)
    fit, plain = fits["gpt"]["1e+17"], analysis.fit_isoflop(base)
    assert fit["n_opt"] == pytest.approx(plain["n_opt"], rel=1e-9)  # a constant shift keeps the vertex
    assert fit["loss_min"] == pytest.approx(plain["loss_min"] + 0.01)
    assert (fit["points"], fit["runs"], fit["seeds"], fit["diverged"]) == (5, 15, [0, 1, 2], [])
    table = analysis.format_table(rows, fits)
    assert "mean over seeds, spread min..max over seeds" in table
    row = next(line for line in table.splitlines() if ",".join(first["run_ids"]) in line)
    assert row.split()[-3:] == ["3", f"{first['final_eval_loss']:.4f}", f"{first['min']:.4f}..{first['max']:.4f}"]
    analysis.plot_isoflop(rows, fits, tmp_path / "seeds.png")
    assert (tmp_path / "seeds.png").read_bytes()[:8] == PNG_MAGIC


def test_diverged_runs_are_left_out_of_fits_and_named(tmp_path):
    rows = sweep_results(archs=("gpt",), budgets=(1e17, 1e18))
    spike = dict(rows[1], run_id="gpt-spike", status="diverged", final_eval_loss=50.0)
    nan = dict(rows[2], run_id="gpt-nan", status="diverged", final_eval_loss=None)
    fits = analysis.fit_sweep(rows + [spike, nan], resamples=20)
    clean = analysis.fit_sweep(rows, resamples=20)
    fit = fits["gpt"]["1e+17"]
    assert fit["n_opt"] == pytest.approx(clean["gpt"]["1e+17"]["n_opt"], rel=1e-12)
    assert fit["n_opt_ci"] == clean["gpt"]["1e+17"]["n_opt_ci"]  # resampled from the same runs
    assert fit["diverged"] == ["gpt-spike", "gpt-nan"] and fits["gpt"]["1e+18"]["diverged"] == []
    table = analysis.format_table(rows + [spike, nan], fits)
    assert "diverged, left out of the fit: gpt-spike, gpt-nan" in table
    json.dumps(fits, allow_nan=False)
    analysis.plot_isoflop(rows + [spike, nan], fits, tmp_path / "diverged.png")


def test_fit_on_bits_per_byte_leaves_out_runs_without_it():
    rows = [dict(r, final_eval_bpb=r["final_eval_loss"] / math.log(2)) for r in sweep_results(archs=("gpt",), budgets=(1e17,))]
    rows.append(dict(rows[0], run_id="no-bpb", params=3e7, final_eval_bpb=None))
    fit = analysis.fit_sweep(rows, metric="final_eval_bpb", resamples=0)["gpt"]["1e+17"]
    assert fit["n_opt"] == pytest.approx(1e6, rel=1e-6) and fit["points"] == 5
    assert fit["loss_min"] == pytest.approx(3.0 / math.log(2)) and fit["metric"] == "final_eval_bpb"
    assert "final_eval_bpb" in analysis.format_table(rows, {"gpt": {"1e+17": fit}}, "final_eval_bpb")


def test_d_opt_is_the_budget_over_flops_per_token_at_the_optimum():
    rows = sweep_results(archs=("gpt",), budgets=(1e17,))  # vertex 1e6, a sampled size
    for r in rows:
        r["flops_per_token"] = 6 * r["params"] + 1e5  # attention-like extra FLOPs
    fit = analysis.fit_sweep(rows, resamples=0)["gpt"]["1e+17"]
    assert fit["d_opt"] == pytest.approx(1e17 / (6e6 + 1e5), rel=1e-9)


# ----------------------------------------------------------------------------- bootstrap and power laws


def noisy_parabola_sweep(budgets=(1e17, 1e18, 1e19, 1e20), seeds=3, noise=0.02, rng_seed=0):
    """Parabolas in log10 N whose vertex is N_opt = 10^6 (C / 1e17)^0.5, each size run with `seeds` seeds and
    Gaussian loss noise; sizes +-0.8 decades around the vertex."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for budget in budgets:
        vertex = 6.0 + 0.5 * math.log10(budget / budgets[0])
        for i, n in enumerate(np.logspace(vertex - 0.8, vertex + 0.8, 7)):
            for seed in range(seeds):
                row = parabola_points([n], vertex=vertex)[0]
                row.update(run_id=f"gpt-{budget:.0e}-{i}-s{seed}", arch="gpt", budget=budget, tokens=budget / (6 * n),
                           flops_per_token=6 * n, seed=seed, final_eval_loss=row["final_eval_loss"] + rng.normal(0, noise))
                rows.append(row)
    return rows


def test_bootstrap_intervals_contain_the_true_exponent():
    fits = analysis.fit_sweep(noisy_parabola_sweep(), resamples=200)
    block = fits["gpt"]["power_law"]
    law = block["n_opt_law"]
    lo, hi = law["exponent_ci"]
    assert lo < 0.5 < hi and hi - lo < 0.1
    assert lo <= law["exponent"] <= hi and law["resamples_used"] == 200
    band = law["band"]
    mid = law["coefficient"] * np.array(band["budgets"]) ** law["exponent"]
    assert np.all(np.array(band["lo"]) <= mid) and np.all(mid <= np.array(band["hi"]))
    for budget, fit in analysis.budget_fits(fits["gpt"]).items():
        assert fit["n_opt_ci"][0] <= fit["n_opt"] <= fit["n_opt_ci"][1]
        assert fit["bootstrap"] == {"resamples": 200, "seed": 0, "percentiles": [2.5, 97.5],
                                    "unit": "each budget's runs, resampled with replacement", "with_minimum": 200}
    assert analysis.fit_sweep(noisy_parabola_sweep(), resamples=200) == fits  # fixed seed: reproducible
    text = analysis.format_table(noisy_parabola_sweep(), fits)
    assert f"N_opt = {law['coefficient']:.3g} C^{law['exponent']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    json.dumps(fits, allow_nan=False)


# ----------------------------------------------------------------------------- parametric fit (approach 3)

LAW = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022
LAW_N_EXPONENT = LAW["beta"] / (LAW["alpha"] + LAW["beta"])  # their eq. 4: N_opt ~ C^(beta / (alpha + beta))


def law_sweep(budgets=(1e18, 1e19, 1e20, 1e21), seeds=(0,), noise=0.0, rng_seed=0, arch="gpt"):
    """An isoFLOP sweep whose losses follow LAW (times exp(N(0, noise))) with D = C / 6N, 7 sizes per budget
    placed as the sweep places them: 4^t times the D = 20 N guess, t evenly spaced in [-1, 1]."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for budget in budgets:
        for i, n in enumerate(math.sqrt(budget / 120) * 4.0 ** np.linspace(-1, 1, 7)):
            for seed in seeds:
                d = budget / (6 * n)
                rows.append(dict(run_id=f"{arch}-{budget:.0e}-{i}-s{seed}", arch=arch, budget=budget, params=float(n),
                                 tokens=float(d), flops_per_token=6 * float(n), seed=seed,
                                 final_eval_loss=float(analysis.parametric_loss(LAW, n, d)) * math.exp(rng.normal(0, noise))))
    return rows


def test_comparison_to_the_baseline_reads_a_uniformly_better_arch():
    gpt = law_sweep(budgets=(1e17, 1e18))  # two budgets: the L_min(C) law passes through both optima
    better = [dict(row, arch="ngpt", final_eval_loss=0.97 * row["final_eval_loss"]) for row in gpt]
    comparison = analysis.compare_to_baseline(gpt + better, "gpt", resamples=20)
    fits = analysis.fit_sweep(gpt, resamples=0)["gpt"]
    budgets = sorted(analysis.budget_fits(fits), key=float)
    slope = np.polyfit(np.log10([float(b) for b in budgets]), np.log10([fits[b]["loss_min"] for b in budgets]), 1)[0]
    assert set(comparison) == {"ngpt"} and set(comparison["ngpt"]) == set(budgets)
    for budget in budgets:
        entry = comparison["ngpt"][budget]
        assert entry["loss_delta"] == pytest.approx(-0.03 * fits[budget]["loss_min"], rel=1e-6)
        assert entry["n_opt_ratio"] == pytest.approx(1.0)  # a constant factor does not move the vertex
        # 3% lower loss is worth the compute at which the baseline's L_min(C) law falls by 3%.
        assert entry["compute_multiplier"] == pytest.approx(0.97 ** (1 / slope), rel=1e-6)
        lo, hi = entry["loss_delta_ci"]
        assert lo <= entry["loss_delta"] <= hi < 0
    assert analysis.compare_to_baseline(better, "gpt") == {}


def test_parametric_fit_recovers_a_known_law():
    rng = np.random.default_rng(0)
    n, d = 10 ** rng.uniform(7, 10, 100), 10 ** rng.uniform(9, 12, 100)
    loss = analysis.parametric_loss(LAW, n, d) * np.exp(rng.normal(0, 0.002, n.size))  # 0.2% noise
    fit = analysis.fit_parametric([dict(params=a, tokens=b, final_eval_loss=c) for a, b, c in zip(n, d, loss)])
    assert fit["E"] == pytest.approx(LAW["E"], abs=0.03)
    assert fit["A"] == pytest.approx(LAW["A"], rel=0.2) and fit["B"] == pytest.approx(LAW["B"], rel=0.2)
    assert fit["alpha"] == pytest.approx(LAW["alpha"], abs=0.01) and fit["beta"] == pytest.approx(LAW["beta"], abs=0.01)
    assert fit["n_opt_law"]["exponent"] == pytest.approx(LAW_N_EXPONENT, abs=0.01)
    assert fit["n_opt_law"]["exponent"] + fit["d_opt_law"]["exponent"] == pytest.approx(1.0)
    assert (fit["points"], fit["huber_delta"], fit["flops"]) == (100, 1e-3, "C = 6 N D")


def test_parametric_compute_optimum_minimises_the_law_at_fixed_compute():
    fit = analysis.fit_parametric(law_sweep())
    c = 1e20
    n = np.geomspace(1e8, 1e11, 20001)
    best = n[np.argmin(analysis.parametric_loss(fit, n, c / (6 * n)))]
    assert fit["n_opt_law"]["coefficient"] * c ** fit["n_opt_law"]["exponent"] == pytest.approx(best, rel=1e-3)
    assert fit["d_opt_law"]["coefficient"] * c ** fit["d_opt_law"]["exponent"] == pytest.approx(c / (6 * best), rel=1e-3)


@pytest.mark.parametrize("noise, tolerance", [(0.0, 0.002), (0.003, 0.02)])
def test_approaches_2_and_3_agree_on_the_n_opt_exponent(noise, tolerance):
    rows = law_sweep(noise=noise)
    approach2 = analysis.fit_sweep(rows, resamples=0)["gpt"]["power_law"]["n_opt_law"]["exponent"]
    approach3 = analysis.fit_parametric_sweep(rows, resamples=0)["gpt"]["n_opt_law"]["exponent"]
    assert approach2 == pytest.approx(approach3, abs=tolerance)
    assert approach3 == pytest.approx(LAW_N_EXPONENT, abs=tolerance)


def test_parametric_bootstrap_intervals_contain_the_truth(tmp_path):
    rows = law_sweep(seeds=(0, 1), noise=0.005, rng_seed=1)
    laws = analysis.fit_parametric_sweep(rows, resamples=60)
    law = laws["gpt"]
    lo, hi = law["ci"]["n_opt_exponent"]
    assert lo < LAW_N_EXPONENT < hi and hi - lo < 0.05
    assert law["bootstrap"]["used"] == 60 and law["points"] == 28  # 4 budgets x 7 sizes, seeds averaged
    text = analysis.format_parametric(laws)
    assert f"N_opt ~ C^{law['n_opt_law']['exponent']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    json.dumps(laws, allow_nan=False)
    fits = analysis.fit_sweep(rows, resamples=50)
    for name, draw in (("parametric.png", lambda p: analysis.plot_parametric(rows, laws, p)),
                       ("law.png", lambda p: analysis.plot_power_law(fits, p, parametric=laws))):
        draw(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC and (tmp_path / name).stat().st_size > 5000


def test_parametric_fit_needs_two_budgets_and_five_points():
    assert analysis.fit_parametric_sweep(law_sweep(budgets=(1e19,)), resamples=0) == {}
    with pytest.raises(ValueError, match=">= 5 points"):
        analysis.fit_parametric(law_sweep(budgets=(1e19,))[:4])


# ----------------------------------------------------------------------------- speedup from two runs


def write_run(run_dir, loss_at, seconds_per_step):
    """A run directory whose metrics.jsonl evaluates loss_at(step) every 20 steps."""
    run_dir.mkdir(parents=True)
    write_jsonl(run_dir / "metrics.jsonl", [{"step": s, "loss": float(loss_at(s)), "wall_s": seconds_per_step * s,
                                            "eval_loss": float(loss_at(s)) if s % 20 == 0 else None}
                                           for s in range(10, 2001, 10)])


def test_speedup_from_two_runs_against_steps_and_their_wall_clocks(tmp_path):
    write_run(tmp_path / "gpt", loss_curve, 0.1)
    write_run(tmp_path / "ngpt", lambda s: loss_curve(2 * s), 0.15)  # 2x fewer steps, 1.5x slower steps
    result = analysis.speedup_from_runs(tmp_path / "gpt", tmp_path / "ngpt", smooth=0.0)
    assert (result["baseline"]["arch"], result["variant"]["arch"]) == ("gpt", "ngpt")
    assert result["summary"]["steps"]["last_defined_at"] == 1000  # the baseline stops at step 2000
    assert result["summary"]["steps"]["last_defined"] == pytest.approx(2.0, rel=1e-2)
    assert result["summary"]["wall"]["last_defined"] == pytest.approx(2.0 / 1.5, rel=1e-2)
    lines = analysis.format_speedup_headlines(result["summary"])
    assert lines[0].startswith("speedup vs steps: last 2.00x") and lines[1].startswith("speedup vs wall: last 1.33x")
    analysis.plot_speedup_curves(result, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------- experiments.report


def write_sweep_workdir(workdir, plan=True):
    """A two-arch, three-budget, two-seed sweep following LAW (ngpt 3% lower), one run diverged, with a
    plan.json naming hardware, data, seeds and an LR grid (or none)."""
    workdir.mkdir(parents=True)
    rows = []
    for arch, scale in (("gpt", 1.0), ("ngpt", 0.97)):
        for row in law_sweep(budgets=(1e17, 1e18, 1e19), seeds=(0, 1), noise=0.003, rng_seed=len(arch), arch=arch):
            rows.append(dict(row, final_eval_loss=scale * row["final_eval_loss"], status="complete", learning_rate=3e-3,
                             data_fingerprint={"name": "pystdlib", "tokenizer": "utf8-bytes"}, seq_len=64,
                             epochs=row["tokens"] / 4e10))
    rows[3].update(status="diverged", final_eval_loss=None)
    write_jsonl(workdir / "results.jsonl", rows)
    if plan:
        (workdir / "plan.json").write_text(json.dumps({
            "budgets": [1e17, 1e18, 1e19], "seeds": [0, 1], "data": "pystdlib", "seq_len": 64,
            "hardware": "8x H100",
            "lr_search": {"points": 3, "grid_multipliers": [0.316, 3.16, 31.6], "calibration_budget": 2.5e16,
                          "calibration": {"gpt": {"chosen_lr": 3e-3}, "ngpt": {"chosen_lr": 1e-2}}}}))
    return rows


def write_speedup_workdir(workdir):
    """A curves.json as experiments.speedup writes it: the variant needs half the steps, each 1.2x as long;
    the baseline's best run names its hardware and tokenizer."""
    workdir.mkdir(parents=True)
    (workdir / "runs" / "gpt-lr0.003").mkdir(parents=True)
    (workdir / "runs" / "gpt-lr0.003" / "config.json").write_text(json.dumps({
        "hardware": "8x H100", "data_fingerprint": {"tokenizer": {"spec": "spm:4096", "vocab_size": 4096}}}))
    steps = np.arange(0, 1001, 50.0)
    curves = {"steps": analysis.speedup_curve(steps, loss_curve(steps), steps, loss_curve(2 * steps)),
              "wall": analysis.speedup_curve(0.01 * steps, loss_curve(steps), 0.012 * steps, loss_curve(2 * steps))}
    side = lambda arch, lr, final: {"arch": arch, "learning_rate": lr, "params": 12345, "final_eval_loss": final,
                                    "sweep": {"0.003": final, "0.01": final + 0.1}, "best_at_grid_edge": True}
    (workdir / "curves.json").write_text(json.dumps({
        "setup": {"tokens": 512000, "batch_size": 8, "seq_len": 64, "steps": 1000, "eval_every": 50,
                  "data": "synthetic", "devices": 1, "smooth": 0.2},
        "baseline": dict(side("gpt", 3e-3, float(loss_curve(1000))), run_dir="elsewhere/runs/gpt-lr0.003"),
        "variant": side("ngpt", 3e-3, float(loss_curve(2000))),
        "per_step_time": {"baseline_s": 0.01, "variant_s": 0.012, "overhead": 0.2}, **curves,
        "summary": {key: analysis.summarize_speedup(curve) for key, curve in curves.items()}}))


def write_distillation_workdir(workdir):
    """distillation.json, config.json and summary.json as experiments.distill writes them."""
    workdir.mkdir(parents=True)
    (workdir / "distillation.json").write_text(json.dumps({
        "student_eval_loss": 1.5, "teacher_eval_loss": 1.4, "baseline_eval_loss": 1.6, "kept": 0.5,
        "soft_weight": 0.25, "baseline": "/elsewhere"}))
    (workdir / "config.json").write_text(json.dumps({"hardware": "8x H100"}))
    (workdir / "summary.json").write_text(json.dumps({"steps": 732, "final_eval_loss": 1.5}))


def test_report_tables_come_from_the_workdirs_files(tmp_path):
    sweep, bare, speedup, distill = tmp_path / "sweep", tmp_path / "bare", tmp_path / "speedup", tmp_path / "distill"
    rows = write_sweep_workdir(sweep)
    write_sweep_workdir(bare, plan=False)
    write_speedup_workdir(speedup)
    write_distillation_workdir(distill)
    out = tmp_path / "report.md"
    result = run("experiments.report", str(sweep), str(bare), str(speedup), str(distill), "--resamples", "30",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text == report.build_report([sweep, bare, speedup, distill], resamples=30)
    distill_text = text.split("## Distillation")[1]
    assert "Setup: hardware 8x H100; student steps 732; loss 0.75 x labels + 0.25 x teacher soft targets." in distill_text
    assert "| student | 1.5000 |" in distill_text and "| teacher | 1.4000 |" in distill_text
    assert "gain kept: 0.5 (" in distill_text

    sweep_text, bare_text = text.split("## Sweep")[1:3]
    assert ("Setup: hardware 8x H100; data pystdlib; tokenizer utf8-bytes; seq_len 64; budgets 1e+17, 1e+18, 1e+19; "
            "seeds 0, 1; LR searched per arch: 3 rates x0.32..x32 the Kaplan rate at 2.5e+16 FLOPs, best carried to "
            "every size by the Kaplan ratio (gpt 0.003, ngpt 0.01).") in sweep_text
    assert "Setup: data pystdlib; tokenizer utf8-bytes; seq_len 64; budgets 1e+17, 1e+18, 1e+19; seeds 0, 1; LR fixed 0.003." in bare_text
    assert "2.5..97.5 percentiles of 30 bootstrap resamples" in sweep_text
    fits = analysis.fit_sweep(rows, resamples=30)
    for arch in ("gpt", "ngpt"):
        for budget, fit in analysis.budget_fits(fits[arch]).items():
            lo, hi = fit["n_opt_ci"]
            assert f"| {arch} | {float(budget):.3g} | 7 | {fit['runs']} | {fit['n_opt']:.3g} [{lo:.3g}, {hi:.3g}]" in sweep_text
        law = fits[arch]["power_law"]["n_opt_law"]
        assert f"{law['exponent']:.3f} [{law['exponent_ci'][0]:.3f}, {law['exponent_ci'][1]:.3f}]" in sweep_text
    assert f"| {rows[3]['run_id']} |" in sweep_text and f"{rows[3]['run_id']} (diverged)" in sweep_text
    assert f"| {rows[0]['tokens']:.3g} | {rows[0]['epochs']:.2g} | " in sweep_text  # the epochs read, per size
    laws = analysis.fit_parametric_sweep(rows, resamples=30)
    assert f"| gpt | 21 | {laws['gpt']['E']:.4g} [" in sweep_text
    against = analysis.compare_to_baseline(rows, "gpt", resamples=30)["ngpt"][repr(1e18)]
    assert f"| ngpt | 1e+18 | {against['loss_delta']:+.4f} [{against['loss_delta_ci'][0]:+.4f}, " in sweep_text

    speedup_text = text.split("## Speedup")[1].split("## Distillation")[0]
    assert "| steps | 2.00x | 500 |" in speedup_text and "| wall | 1.67x |" in speedup_text
    assert "ratio 1.200 (variant / baseline)" in speedup_text and "LR searched: 0.003, 0.01" in speedup_text
    assert "Setup: hardware 8x H100; tokenizer spm:4096 (vocabulary 4096); devices 1;" in speedup_text
    assert "0.003 (best at the grid's edge)" in speedup_text
    final = float(loss_curve(1000))
    assert f"| 0.01 | {final + 0.1:.4f} | {float(loss_curve(2000)) + 0.1:.4f} |" in speedup_text


@pytest.mark.parametrize("make, args, named", [
    (lambda tmp: None, lambda tmp: [str(tmp / "missing")], "missing"),
    (lambda tmp: (tmp / "empty").mkdir(), lambda tmp: [str(tmp / "empty")], "empty"),
    (write_speedup_workdir, lambda tmp: [str(tmp / "w"), str(tmp / "nothing")], "nothing"),
    (lambda tmp: None, lambda tmp: [], "WORKDIR"),
    (write_speedup_workdir, lambda tmp: [str(tmp / "w"), "--resamples", "-1"], "--resamples"),
], ids=["missing", "not-a-workdir", "second-bad", "none", "negative-resamples"])
def test_report_bad_input_is_one_line_and_writes_nothing(tmp_path, make, args, named):
    make(tmp_path / "w" if make is write_speedup_workdir else tmp_path)
    out = tmp_path / "report.md"
    assert_usage_error(run("experiments.report", *args(tmp_path), "--out", str(out)), named)
    assert not out.exists()
