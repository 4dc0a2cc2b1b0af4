"""Analysis of isoFLOP sweeps: loading, seed averaging, parabola, power-law and parametric fits with
bootstrap intervals, speedup curves, plots.

Inputs follow the sweep contract (DESIGN.md, "what a sweep writes"): `<workdir>/results.jsonl`
holds one JSON object per finished run (several budgets and seeds may share one file; a run with
status "diverged" is named but never fitted), `<workdir>/runs/<run_id>/metrics.jsonl` one per log
step, a speedup workdir's `curves.json` the report of experiments/speedup.py. Workdirs may be local
or remote (gs://...): files are read through etils.epath.
Fits are plain dicts of floats and lists, so they can be written to `fits.json` as they are.
Intervals are percentile bootstrap intervals (PERCENTILES of RESAMPLES resamples, fixed seed): each
budget's runs are resampled with replacement, seeds averaged per size, and everything refitted.
Plots use matplotlib's object API (a `Figure` saved through the Agg canvas), so this module never
touches pyplot's global state or the backend of the notebook or script that imports it.
"""
from __future__ import annotations

import json
import math

import numpy as np
from etils import epath
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.optimize import least_squares, minimize
from threadpoolctl import threadpool_limits

LOSS_KEY = "final_eval_loss"
DIVERGED = "diverged"
POWER_LAW = "power_law"
RESAMPLES = 1000
PERCENTILES = (2.5, 97.5)
SPREAD = "min..max over seeds"
D_OPT_FROM = "C / flops_per_token(N_opt), flops_per_token interpolated linearly in log-log between the sampled sizes"
HUBER_DELTA = 1e-3
# Starting points of approach 3 (Hoffmann et al. 2022, appendix D.2): every (a, b, e, alpha, beta) of this grid.
HOFFMANN_GRID = (np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
                 np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5))
# L-BFGS-B bounds on (a, b, e, alpha, beta): wide enough for any real law, they keep exp() finite and the
# exponents non-negative where the data do not pin the law down (a fit at a bound is flagged).
PARAMETRIC_BOUNDS = ((-50.0, 50.0), (-50.0, 50.0), (-50.0, 50.0), (0.0, 5.0), (0.0, 5.0))


# ----------------------------------------------------------------------------- loading


def _read_jsonl(path) -> list[dict]:
    """Parse a JSON-lines file, skipping blank lines and a truncated (unparsable) last line."""
    lines = [(i, line) for i, line in enumerate(epath.Path(path).read_text().splitlines(), 1) if line.strip()]
    rows = []
    for k, (lineno, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{path}:{lineno}: invalid JSON line") from None
    return rows


def load_results(*workdirs) -> list[dict]:
    """Concatenate the `results.jsonl` records of one or more sweep workdirs (local or gs://)."""
    if not workdirs:
        raise ValueError("load_results needs at least one sweep workdir")
    return [row for workdir in workdirs for row in _read_jsonl(epath.Path(workdir) / "results.jsonl")]


def load_metrics(run_dir) -> list[dict]:
    """The per-step records of one run, from `<run_dir>/metrics.jsonl`."""
    return _read_jsonl(epath.Path(run_dir) / "metrics.jsonl")


def load_curves(workdir) -> dict:
    """The `curves.json` of a speedup workdir (written by experiments/speedup.py)."""
    return json.loads((epath.Path(workdir) / "curves.json").read_text())


def eval_curve(metrics, x_key: str = "step", loss_key: str = "eval_loss") -> tuple[np.ndarray, np.ndarray]:
    """(x, loss) at the eval steps of a run's metrics; x_key "wall_s" gives wall-clock seconds.
    loss_key "eval_causal_loss" (the pass sampling takes) falls back to eval_loss in a run that does not
    log it: its training pass looks at no later token, so its eval pass is that pass."""
    loss_key = loss_key if any(loss_key in m for m in metrics) else "eval_loss"
    rows = [m for m in metrics if m.get(loss_key) is not None and m.get(x_key) is not None]
    return (np.array([m[x_key] for m in rows], dtype=float),
            np.array([m[loss_key] for m in rows], dtype=float))


def mean_eval_curve(runs_metrics, loss_key: str = "eval_loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, mean loss): `eval_curve` averaged over several runs (seeds) at the steps every run
    evaluated (a diverged seed's stops the curve where it stopped)."""
    curves = [dict(zip(*eval_curve(metrics, "step", loss_key))) for metrics in runs_metrics]
    xs = sorted(set.intersection(*(set(curve) for curve in curves)))
    return np.array(xs, dtype=float), np.array([np.mean([curve[x] for curve in curves]) for x in xs], dtype=float)


def budget_key(budget) -> str:
    """Canonical string for a FLOP budget (the key used by `fit_sweep`): `repr(float)`, e.g. '6e+18'."""
    return repr(float(budget))


def _groups(results) -> dict[tuple[str, str], list[dict]]:
    """Results grouped by (arch, budget key), sorted by arch then budget."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        groups.setdefault((row["arch"], budget_key(row["budget"])), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], float(item[0][1]))))


def _by_arch(results) -> dict[str, dict[str, list[dict]]]:
    """Results as {arch: {budget key: rows}}, archs and budgets sorted."""
    archs: dict[str, dict[str, list[dict]]] = {}
    for (arch, budget), rows in _groups(results).items():
        archs.setdefault(arch, {})[budget] = rows
    return archs


# ----------------------------------------------------------------------------- seeds


def diverged(row) -> bool:
    """True for a run the sweep marked diverged (a record without a status is a complete run)."""
    return row.get("status") == DIVERGED


def _value(row, metric: str) -> float:
    """The row's metric as a float, NaN where it is missing (e.g. final_eval_bpb null)."""
    value = row.get(metric)
    return math.nan if value is None else float(value)


def _usable(rows, metric: str) -> list[dict]:
    """The runs a fit may use: not diverged, with a finite metric."""
    return [r for r in rows if not diverged(r) and math.isfinite(_value(r, metric))]


def aggregate_seeds(results, x_key: str = "params", metric: str = LOSS_KEY) -> list[dict]:
    """One point per (arch, budget, size = the `x_key` value), averaging the seeds: the fits use one loss
    per size, its mean over the runs with a finite metric (Hoffmann et al. 2022 fit one loss per model).

    Each point: arch, budget, the x_key value, params, active_params, tokens, flops_per_token and epochs
    of the training data (each None if unrecorded), `metric` (the mean, None without a finite value),
    "min" and "max" (the spread, SPREAD), "seeds" (runs averaged), "run_ids" (the runs not diverged)
    and "diverged" (run_ids left out).
    Sorted by arch, budget and params.
    """
    sizes: dict[tuple, list[dict]] = {}
    for row in results:
        sizes.setdefault((row["arch"], budget_key(row["budget"]), row.get(x_key)), []).append(row)
    points = []
    for (arch, budget, x), rows in sizes.items():
        values = [_value(r, metric) for r in _usable(rows, metric)]
        first = rows[0]
        points.append({"arch": arch, "budget": float(budget), x_key: x, "params": first["params"],
                       "active_params": first.get("active_params", first["params"]), "tokens": first["tokens"],
                       "flops_per_token": first.get("flops_per_token"), "epochs": first.get("epochs"),
                       metric: float(np.mean(values)) if values else None,
                       "min": min(values, default=None), "max": max(values, default=None), "seeds": len(values),
                       "run_ids": [r["run_id"] for r in rows if not diverged(r)],
                       "diverged": [r["run_id"] for r in rows if diverged(r)]})
    return sorted(points, key=lambda p: (p["arch"], p["budget"], p["params"]))


# ----------------------------------------------------------------------------- isoFLOP fits (approach 2)


def _finite_xy(points, x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, metric) of the points with a positive x and a finite metric."""
    x = np.array([p.get(x_key) for p in points], dtype=float)
    y = np.array([_value(p, metric) for p in points], dtype=float)
    keep = np.isfinite(x) & (x > 0) & np.isfinite(y)
    return x[keep], y[keep]


def _uncenter(coeffs, center: float) -> list[float]:
    """Coefficients of a u^2 + b u + c with u = t - center, rewritten as polynomial in t."""
    a, b, c = coeffs
    return [float(a), float(b - 2 * a * center), float(a * center**2 - b * center + c)]


def fit_isoflop(points, x_key: str = "params", robust: bool = False, huber_delta: float = 1e-3,
                metric: str = LOSS_KEY) -> dict:
    """Fit `metric` against log10(x) with a parabola; its vertex is the compute-optimal x (Hoffmann et
    al. 2022, approach 2: one isoFLOP profile, L(N) ~ a (log N)^2 + b log N + c).

    Points without a finite `metric` are left out; each point counts once (pass `aggregate_seeds`
    points to fit seed means). `robust=True` minimises a Huber loss (scipy least_squares,
    loss="huber", f_scale=huber_delta in loss units; the small default makes it close to least
    absolute deviations, so one bad run inside the sampled range does not drag the vertex; a bad run
    at either end of the range has high leverage and can still move it).
    Returns {"coeffs": [a, b, c] in log10 x, "has_minimum": a > 0, "n_opt": 10**(-b/2a) or None,
    "loss_min" or None, "points": number used, "x_key", "x_range": [min x, max x]}.
    Raises ValueError with fewer than 3 distinct x values.
    """
    x, y = _finite_xy(points, x_key, metric)
    n_sizes = len(np.unique(x))
    if n_sizes < 3:
        raise ValueError(f"fit_isoflop needs >= 3 distinct {x_key!r} values with a finite "
                         f"{metric}, got {n_sizes}")
    t = np.log10(x)
    center = float(t.mean())
    u = t - center
    coeffs = np.polyfit(u, y, 2)
    if robust:
        coeffs = least_squares(lambda p: np.polyval(p, u) - y, coeffs, loss="huber",
                               f_scale=huber_delta, xtol=1e-12, ftol=1e-12).x
    a, b, c = coeffs
    fit = {"coeffs": _uncenter(coeffs, center), "has_minimum": bool(a > 0), "n_opt": None,
           "loss_min": None, "points": int(len(y)), "x_key": x_key,
           "x_range": [float(x.min()), float(x.max())]}
    if a > 0:
        fit["n_opt"] = float(10 ** (center - b / (2 * a)))
        fit["loss_min"] = float(c - b * b / (4 * a))
    return fit


def _loglog_interp(x: float, xs, ys) -> float:
    """ys(x), linear in log-log between the (sorted, distinct) xs and along the end segments beyond them."""
    u, v = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    i = int(np.clip(np.searchsorted(u, math.log(x)), 1, len(u) - 1))
    return float(np.exp(v[i - 1] + (math.log(x) - u[i - 1]) * (v[i] - v[i - 1]) / (u[i] - u[i - 1])))


def _d_opt(points, fit: dict, budget: float, x_key: str) -> float | None:
    """Tokens at the optimum, D_opt = C / flops_per_token(N_opt) (D_OPT_FROM); None without a minimum
    or without recorded flops_per_token."""
    sampled = sorted((p[x_key], p["flops_per_token"]) for p in points if p.get(x_key))
    if fit["n_opt"] is None or any(fpt is None for _, fpt in sampled):
        return None
    return budget / _loglog_interp(fit["n_opt"], *zip(*sampled))


def _fit_budget(rows, x_key: str, robust: bool, metric: str) -> dict:
    """`fit_isoflop` on the seed means of one (arch, budget), plus "d_opt", "metric", "runs" (runs
    averaged), "seeds" (their seed values) and "diverged" (run_ids left out)."""
    points = aggregate_seeds(rows, x_key, metric)
    fit = fit_isoflop(points, x_key, robust, metric=metric)
    fit.update(d_opt=_d_opt(points, fit, float(rows[0]["budget"]), x_key), metric=metric,
               runs=sum(p["seeds"] for p in points),
               seeds=sorted({r["seed"] for r in _usable(rows, metric) if r.get("seed") is not None}),
               diverged=[run_id for p in points for run_id in p["diverged"]])
    return fit


def _fittable(rows, x_key: str, metric: str) -> bool:
    """True when the usable runs span >= 3 distinct sizes (a parabola)."""
    return len(np.unique(_finite_xy(_usable(rows, metric), x_key, metric)[0])) >= 3


# ----------------------------------------------------------------------------- bootstrap and power laws


def _resample(rows, rng) -> list[dict]:
    """A bootstrap resample: len(rows) rows drawn with replacement."""
    return [rows[i] for i in rng.integers(len(rows), size=len(rows))]


def _interval(samples) -> list[float] | None:
    """The PERCENTILES of the finite samples, None if there are none."""
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    return np.percentile(finite, PERCENTILES).tolist() if finite.size else None


def _optimum(rows, x_key: str, robust: bool, metric: str) -> tuple[float, float, float]:
    """(n_opt, d_opt, loss_min) of one budget's runs, NaN where undefined (fewer than 3 sizes, no minimum)."""
    try:
        fit = _fit_budget(rows, x_key, robust, metric)
    except ValueError:
        return math.nan, math.nan, math.nan
    return tuple(math.nan if fit[k] is None else fit[k] for k in ("n_opt", "d_opt", "loss_min"))


def _exact(rows) -> bool:
    """True for usable runs that are one per size at three sizes: the parabola passes through all three,
    so every resample that has a parabola is the sample itself, and an interval would have no width."""
    return len(rows) == 3


def _bootstrap_optima(budget_rows, x_key: str, robust: bool, metric: str, resamples: int, seed: int) -> np.ndarray:
    """(resamples, budgets, 3) array of the refitted (n_opt, d_opt, loss_min) per budget: each budget's
    usable runs resampled with replacement, seeds averaged, the parabola refitted; NaN where undefined
    (no minimum, fewer than 3 sizes, or `_exact` runs, which resampling cannot move)."""
    rng = np.random.default_rng(seed)
    samples = [[(math.nan,) * 3 if _exact(rows) else _optimum(_resample(rows, rng), x_key, robust, metric)
                for rows in budget_rows]
               for _ in range(resamples)]
    return np.array(samples, dtype=float).reshape(resamples, len(budget_rows), 3)


def fit_power_law(budgets, values) -> dict:
    """Least-squares fit of values = coefficient * budgets**exponent in log-log space (N_opt = a C^alpha,
    D_opt = b C^beta; Hoffmann et al. 2022, eq. 3)."""
    c = np.asarray(budgets, dtype=float)
    v = np.asarray(values, dtype=float)
    if len(np.unique(c)) < 2 or np.any(c <= 0) or np.any(v <= 0):
        raise ValueError("fit_power_law needs >= 2 distinct budgets and positive values")
    exponent, intercept = np.polyfit(np.log10(c), np.log10(v), 1)
    return {"coefficient": float(10**intercept), "exponent": float(exponent)}


def _law_with_interval(budgets, values, samples) -> dict | None:
    """`fit_power_law` of values against budgets, with percentile intervals of its "coefficient_ci" and
    "exponent_ci" and a "band" ({"budgets", "lo", "hi"} over the budget range) from the bootstrap
    samples (resamples, budgets) in which every budget has a value; None if a value is missing."""
    if any(v is None for v in values):
        return None
    law = fit_power_law(budgets, values)
    ok = np.all(np.isfinite(samples) & (samples > 0), axis=1)
    law.update(resamples_used=int(ok.sum()), coefficient_ci=None, exponent_ci=None, band=None)
    if ok.any():
        exponents, intercepts = np.polyfit(np.log10(budgets), np.log10(samples[ok]).T, 1).reshape(2, -1)
        grid = np.geomspace(min(budgets), max(budgets), 25)
        lo, hi = 10 ** np.percentile(intercepts[:, None] + exponents[:, None] * np.log10(grid), PERCENTILES, axis=0)
        law.update(coefficient_ci=(10 ** np.percentile(intercepts, PERCENTILES)).tolist(),
                   exponent_ci=_interval(exponents),
                   band={"budgets": grid.tolist(), "lo": lo.tolist(), "hi": hi.tolist()})
    return law


def _power_laws(budgets, fits, samples) -> dict | None:
    """N_opt = a C^alpha and D_opt = b C^beta over the budgets whose parabola has a minimum (None with
    fewer than 2), with bootstrap intervals from `samples` (resamples, budgets, 3)."""
    keep = [i for i, fit in enumerate(fits) if fit["has_minimum"]]
    if len(keep) < 2:
        return None
    c = [budgets[i] for i in keep]
    column = lambda key: [fits[i][key] for i in keep]
    return {"budgets": c, "n_opt": column("n_opt"), "d_opt": column("d_opt"), "loss_min": column("loss_min"),
            "n_opt_law": _law_with_interval(c, column("n_opt"), samples[:, keep, 0]),
            "d_opt_law": _law_with_interval(c, column("d_opt"), samples[:, keep, 1]),
            "d_opt_from": D_OPT_FROM}


def _bootstrap_note(resamples: int, seed: int) -> dict:
    """How the intervals were made, recorded beside them."""
    return {"resamples": resamples, "seed": seed, "percentiles": list(PERCENTILES),
            "unit": "each budget's runs, resampled with replacement"}


def fit_sweep(results, x_key: str = "params", robust: bool = False, metric: str = LOSS_KEY,
              resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Approach 2 over a sweep: {arch: {budget_key: fit, ..., "power_law": laws}}.

    Per (arch, budget), `fit_isoflop` on the seed means (`aggregate_seeds`) of the runs that did not
    diverge, plus "d_opt" (D_OPT_FROM), "metric", "runs", "seeds", "diverged" (run_ids left out) and
    bootstrap intervals "n_opt_ci", "d_opt_ci", "loss_min_ci" ([lo, hi], None where undefined) with
    "bootstrap" (settings, and "with_minimum": resamples whose parabola has a minimum).
    Per arch with >= 2 budgets having a minimum, fits[arch]["power_law"] = {"budgets", "n_opt",
    "d_opt", "loss_min", "n_opt_law", "d_opt_law", "d_opt_from", "bootstrap"}: each law is
    {"coefficient", "exponent", "coefficient_ci", "exponent_ci", "band", "resamples_used"} (a
    resample counts when every budget's refit has a minimum), or None (d_opt_law without
    flops_per_token). Groups with fewer than 3 distinct sizes (e.g. a sweep still running) are left out.
    `resamples=0` gives no intervals. Everything is plain JSON (None, never NaN).
    """
    fits: dict[str, dict] = {}
    for arch, groups in _by_arch(results).items():
        budgets = [b for b, rows in groups.items() if _fittable(rows, x_key, metric)]
        if not budgets:
            continue
        fitted = [_fit_budget(groups[b], x_key, robust, metric) for b in budgets]
        samples = _bootstrap_optima([_usable(groups[b], metric) for b in budgets], x_key, robust, metric,
                                    resamples, seed)
        for fit, sample in zip(fitted, samples.transpose(1, 0, 2)):
            fit.update(n_opt_ci=_interval(sample[:, 0]), d_opt_ci=_interval(sample[:, 1]),
                       loss_min_ci=_interval(sample[:, 2]),
                       bootstrap={**_bootstrap_note(resamples, seed),
                                  "with_minimum": int(np.isfinite(sample[:, 0]).sum())})
        fits[arch] = dict(zip(budgets, fitted))
        laws = _power_laws([float(b) for b in budgets], fitted, samples)
        if laws:
            fits[arch][POWER_LAW] = {**laws, "bootstrap": _bootstrap_note(resamples, seed)}
    return fits


def budget_fits(arch_fits: dict) -> dict[str, dict]:
    """The per-budget entries of one arch's `fit_sweep` result (without "power_law")."""
    return {key: fit for key, fit in arch_fits.items() if key != POWER_LAW}


def _compute_multipliers(budgets, base_losses, losses) -> np.ndarray:
    """C_eq / C per budget: the compute at which the baseline's L_min(C) power law (fitted over the
    budgets, per row of `base_losses` (rows, budgets)) reaches `losses` (rows, budgets); NaN where a
    row has a non-finite loss or the law does not fall with C."""
    log_c = np.log10(np.asarray(budgets, dtype=float))
    multipliers = np.full(np.shape(losses), np.nan)
    for i, (base, loss) in enumerate(zip(base_losses, losses)):
        if np.all(np.isfinite(base)) and np.all(base > 0):
            slope, intercept = np.polyfit(log_c, np.log10(base), 1)
            if slope < 0:
                multipliers[i] = 10 ** ((np.log10(loss) - intercept) / slope - log_c)
    return multipliers


def _against(optima: np.ndarray, budgets: list[float]) -> dict[str, np.ndarray]:
    """(rows, budgets) arrays of loss_delta, n_opt_ratio and compute_multiplier from (rows, 2 x budgets,
    3) optima (n_opt, d_opt, loss_min): the baseline's budgets first, then the other arch's."""
    base, other = optima[:, :len(budgets)], optima[:, len(budgets):]
    multiplier = (_compute_multipliers(budgets, base[..., 2], other[..., 2]) if len(budgets) >= 2
                  else np.full(other[..., 2].shape, np.nan))
    return {"loss_delta": other[..., 2] - base[..., 2], "n_opt_ratio": other[..., 0] / base[..., 0],
            "compute_multiplier": multiplier}


def _finite(value) -> float | None:
    return float(value) if math.isfinite(value) else None


def compare_to_baseline(results, baseline: str, x_key: str = "params", metric: str = LOSS_KEY,
                        resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Each other arch against `baseline` at every budget where both have 3 or more sizes to fit:
    {arch: {budget_key: {"loss_delta", "n_opt_ratio", "compute_multiplier", and their "_ci"}}}, None
    where a parabola has no minimum.

    loss_delta = L_min(arch) - L_min(baseline) (negative: the arch is better at equal compute);
    n_opt_ratio = N_opt(arch) / N_opt(baseline) (> 1: its optimum has more parameters, "to the right");
    compute_multiplier = the compute the baseline needs, by its L_min(C) power law over the sweep's
    budgets, to reach the arch's L_min, over C (> 1: the arch is worth that many times the baseline's
    compute; needs >= 2 budgets, an extrapolation outside their range). Intervals come from bootstrap
    resamples of both archs' runs, drawn independently per budget as in `fit_sweep`."""
    groups = _by_arch(results)
    if baseline not in groups:
        return {}
    comparison: dict[str, dict[str, dict]] = {}
    for arch, arch_groups in groups.items():
        budgets = [b for b in arch_groups if arch != baseline and b in groups[baseline]
                   and _fittable(arch_groups[b], x_key, metric) and _fittable(groups[baseline][b], x_key, metric)]
        if not budgets:
            continue
        rows = [_usable(groups[baseline][b], metric) for b in budgets] + [_usable(arch_groups[b], metric)
                                                                           for b in budgets]
        point = np.array([_optimum(r, x_key, False, metric) for r in rows])[None]
        measured = _against(point, [float(b) for b in budgets])
        sampled = _against(_bootstrap_optima(rows, x_key, False, metric, resamples, seed), [float(b) for b in budgets])
        comparison[arch] = {
            budget: {**{key: _finite(value[0, j]) for key, value in measured.items()},
                     **{f"{key}_ci": _interval(value[:, j]) for key, value in sampled.items()}}
            for j, budget in enumerate(budgets)}
    return comparison


# ----------------------------------------------------------------------------- parametric fit (approach 3)


def _lse_terms(theta, log_n, log_d) -> np.ndarray:
    """The three terms of Hoffmann et al. 2022 eq. (D.2) inside the log-sum-exp, a - alpha log N,
    b - beta log D and e, for theta = (..., [a, b, e, alpha, beta]): shape (..., 3, points)."""
    a, b, e, alpha, beta = np.moveaxis(np.asarray(theta, dtype=float), -1, 0)[..., None]
    return np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n), axis=-2)


def _softmax_lse(terms) -> tuple[np.ndarray, np.ndarray]:
    """(log-sum-exp over axis -2, softmax weights along it) of `_lse_terms`, computed stably."""
    top = terms.max(axis=-2, keepdims=True)
    weights = np.exp(terms - top)
    total = weights.sum(axis=-2, keepdims=True)
    return (top + np.log(total))[..., 0, :], weights / total


def _huber(r, delta: float) -> np.ndarray:
    """Huber loss of residuals r: r^2 / 2 within delta, delta (|r| - delta / 2) beyond."""
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def _objective(theta, log_n, log_d, log_l, delta: float) -> tuple[float, np.ndarray]:
    """Hoffmann et al. 2022 eq. (D.2): sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i),
    and its gradient, both scaled by 1 / (points delta^2) (the same minimiser, but of order one, so
    L-BFGS-B's tolerances, absolute below 1, apply)."""
    lse, w = _softmax_lse(_lse_terms(theta, log_n, log_d))
    r = lse - log_l
    psi = np.clip(r, -delta, delta)
    scale = 1.0 / (len(r) * delta * delta)
    grad = np.array([*(w * psi).sum(axis=1), -(psi * w[0] * log_n).sum(), -(psi * w[1] * log_d).sum()])
    return scale * float(_huber(r, delta).sum()), scale * grad


def _grid_starts(data, delta: float, count: int) -> np.ndarray:
    """The `count` points of HOFFMANN_GRID with the lowest eq. (D.2) objective, best first."""
    log_n, log_d, log_l = data
    grid = np.stack(np.meshgrid(*HOFFMANN_GRID, indexing="ij"), axis=-1).reshape(-1, 5)
    losses = _huber(_softmax_lse(_lse_terms(grid, log_n, log_d))[0] - log_l, delta).sum(axis=-1)
    return grid[np.argsort(losses, kind="stable")[:count]]


def _minimise(starts, data, delta: float) -> tuple[np.ndarray, float]:
    """The best (theta, objective) of L-BFGS-B runs of `_objective` within PARAMETRIC_BOUNDS from each
    start, with BLAS on one thread (L-BFGS-B's tiny dense steps run many times slower when OpenBLAS
    threads them)."""
    with threadpool_limits(limits=1, user_api="blas"):
        runs = [minimize(_objective, start, args=(*data, delta), jac=True, method="L-BFGS-B", bounds=PARAMETRIC_BOUNDS,
                         options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 2000}) for start in starts]
    best = min(runs, key=lambda run: run.fun)
    return best.x, float(best.fun)


def _parametric_data(points, x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log N, log D, log L) of the points with a positive N (x_key), D (tokens) and a finite metric."""
    n = np.array([p.get(x_key) for p in points], dtype=float)
    d = np.array([p.get("tokens") for p in points], dtype=float)
    loss = np.array([_value(p, metric) for p in points], dtype=float)
    keep = np.isfinite(n) & (n > 0) & np.isfinite(d) & (d > 0) & np.isfinite(loss) & (loss > 0)
    return np.log(n[keep]), np.log(d[keep]), np.log(loss[keep])


def _compute_optimal(E, A, B, alpha, beta) -> tuple[dict | None, dict | None]:
    """N_opt = G (C/6)^a and D_opt = G^-1 (C/6)^b under C = 6 N D, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha+beta), b = alpha / (alpha+beta) (Hoffmann et al. 2022, eq. 4), as power laws in C;
    (None, None) unless both exponents are positive and the coefficients finite."""
    if not (alpha > 0 and beta > 0):
        return None, None
    log_g = (math.log(alpha * A) - math.log(beta * B)) / (alpha + beta)
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    with np.errstate(over="ignore"):
        coefficients = np.exp([log_g - a * math.log(6.0), -log_g - b * math.log(6.0)])
    if not np.all(np.isfinite(coefficients)):
        return None, None
    return ({"coefficient": float(coefficients[0]), "exponent": a},
            {"coefficient": float(coefficients[1]), "exponent": b})


def _parametric_result(theta, objective: float, points: int) -> dict:
    """The fitted law {"E", "A", "B", "alpha", "beta"} (A = exp(a), B = exp(b), E = exp(e)), its
    compute-optimal "n_opt_law" and "d_opt_law" (`_compute_optimal`), "objective", "points" and
    "at_bounds" (the parameters that ended on a PARAMETRIC_BOUNDS bound: the data do not pin them)."""
    a, b, e, alpha, beta = (float(v) for v in theta)
    law = {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}
    n_law, d_law = _compute_optimal(**law)
    at_bounds = [name for name, value, (lo, hi) in zip(("A", "B", "E", "alpha", "beta"), theta, PARAMETRIC_BOUNDS)
                 if not lo + 1e-9 < value < hi - 1e-9]
    return {**law, "n_opt_law": n_law, "d_opt_law": d_law, "objective": objective, "points": points,
            "at_bounds": at_bounds}


def fit_parametric(points, x_key: str = "params", metric: str = LOSS_KEY, huber_delta: float = HUBER_DELTA,
                   starts: int = 8) -> dict:
    """Chinchilla approach 3 (Hoffmann et al. 2022, eq. 2 and appendix D.2): L(N, D) = E + A / N^alpha +
    B / D^beta, fitted by minimising sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)
    over (a, b, e, alpha, beta), A = exp(a), B = exp(b), E = exp(e), with L-BFGS-B from the `starts`
    best points (by that objective) of HOFFMANN_GRID.

    N is each point's `x_key`, D its "tokens", L its `metric`; each point counts once (pass
    `aggregate_seeds` points to fit seed means). Returns `_parametric_result` plus "x_key",
    "metric", "huber_delta", "flops": "C = 6 N D" (the convention of "n_opt_law" and "d_opt_law").
    Raises ValueError with fewer than 5 usable points (5 parameters).
    """
    data = _parametric_data(points, x_key, metric)
    if len(data[0]) < 5:
        raise ValueError(f"fit_parametric needs >= 5 points with positive {x_key} and tokens and a finite "
                         f"{metric}, got {len(data[0])}")
    theta, objective = _minimise(_grid_starts(data, huber_delta, starts), data, huber_delta)
    return {**_parametric_result(theta, objective, len(data[0])), "x_key": x_key, "metric": metric,
            "huber_delta": huber_delta, "flops": "C = 6 N D"}


def parametric_loss(law: dict, n, d) -> np.ndarray:
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2) of a `fit_parametric` result."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    return law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]


PARAMETRIC_KEYS = ("E", "A", "B", "alpha", "beta", "n_opt_exponent", "d_opt_exponent")


def _parametric_sample(law: dict) -> list[float]:
    """The PARAMETRIC_KEYS of one fitted law (NaN exponents without a compute-optimal law)."""
    exponents = [law[k]["exponent"] if law[k] else math.nan for k in ("n_opt_law", "d_opt_law")]
    return [law[k] for k in PARAMETRIC_KEYS[:5]] + exponents


def _parametric_refit(theta, rows, x_key: str, metric: str, delta: float) -> list[float]:
    """`_parametric_sample` of the law refitted to a resample's seed means by L-BFGS-B from `theta`,
    the full-data optimum (the grid search is done once, on all points); NaNs when the resample has
    fewer than 5 sizes."""
    data = _parametric_data(aggregate_seeds(rows, x_key, metric), x_key, metric)
    if len(data[0]) < 5:
        return [math.nan] * len(PARAMETRIC_KEYS)
    return _parametric_sample(_parametric_result(*_minimise([theta], data, delta), len(data[0])))


def fit_parametric_sweep(results, x_key: str = "params", metric: str = LOSS_KEY, resamples: int = RESAMPLES,
                         seed: int = 0, huber_delta: float = HUBER_DELTA) -> dict[str, dict]:
    """`fit_parametric` per arch on the seed means of its usable runs (not diverged, finite metric) over
    its budgets with >= 3 sizes; archs with fewer than 2 such budgets are left out (on one isoFLOP
    profile N and D are tied, so A/N^alpha and B/D^beta cannot be told apart).

    Adds "ci": {key: [lo, hi] or None} for PARAMETRIC_KEYS and "bootstrap" (settings and "used"):
    each budget's runs resampled with replacement, seeds averaged, the law refitted by L-BFGS-B from
    the full-data optimum (`_parametric_refit`).
    """
    laws = {}
    for arch, groups in _by_arch(results).items():
        budget_rows = [_usable(rows, metric) for rows in groups.values() if _fittable(rows, x_key, metric)]
        if len(budget_rows) < 2:
            continue
        law = fit_parametric(aggregate_seeds([r for rows in budget_rows for r in rows], x_key, metric), x_key,
                             metric, huber_delta)
        theta = [math.log(law["A"]), math.log(law["B"]), math.log(law["E"]), law["alpha"], law["beta"]]
        rng = np.random.default_rng(seed)
        samples = [_parametric_refit(theta, [r for rows in budget_rows for r in _resample(rows, rng)], x_key, metric,
                                     huber_delta) for _ in range(resamples)]
        samples = np.array(samples, dtype=float).reshape(resamples, len(PARAMETRIC_KEYS))
        law["ci"] = {key: _interval(samples[:, i]) for i, key in enumerate(PARAMETRIC_KEYS)}
        law["bootstrap"] = {**_bootstrap_note(resamples, seed), "used": int(np.isfinite(samples[:, 0]).sum())}
        laws[arch] = law
    return laws


# ----------------------------------------------------------------------------- isoFLOP output


def _format_ci(ci, fmt: str) -> str:
    """' [lo, hi]' in `fmt`, or nothing without an interval."""
    return "" if ci is None else f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _draw_points(ax, points, x_key: str, metric: str, colour, label: str) -> None:
    """Seed means as dots, their spread (SPREAD) as error bars."""
    points = [p for p in points if p[metric] is not None and p.get(x_key)]
    if not points:
        return
    mean = np.array([p[metric] for p in points])
    spread = np.array([[m - p["min"], p["max"] - m] for p, m in zip(points, mean)]).T
    ax.errorbar([p[x_key] for p in points], mean, yerr=np.maximum(spread, 0), fmt="o", ms=5, capsize=3,
                color=colour, label=label)


def _draw_fit(ax, fit: dict, colour, stagger: int) -> None:
    """The fitted parabola over the sampled range, and the optimum as a star annotated with its size
    (hollow and marked "extrapolated" outside the sampled range; labels of different archs are
    staggered vertically by `stagger` lines)."""
    lo, hi = np.log10(fit["x_range"])
    t = np.linspace(lo, hi, 200)
    ax.plot(10**t, np.polyval(fit["coeffs"], t), color=colour, lw=1.5)
    if fit["has_minimum"]:
        n_opt, loss_min = fit["n_opt"], fit["loss_min"]
        inside = fit["x_range"][0] <= n_opt <= fit["x_range"][1]
        ax.plot(n_opt, loss_min, marker="*", ms=15, color=colour, zorder=5,
                mec="black" if inside else colour, mfc=colour if inside else "none")
        ax.annotate(f"N*={n_opt:.3g}" + ("" if inside else " (extrapolated)"), (n_opt, loss_min),
                    xytext=(0, -16 - 10 * stagger), textcoords="offset points", ha="center", fontsize=8,
                    color=colour)


def _budget_colour(budgets: list[str], budget: str):
    """A budget's colour: viridis from the smallest budget (dark) to the largest (light)."""
    return colormaps["viridis"](0.9 * budgets.index(budget) / max(1, len(budgets) - 1))


def plot_isoflop(results, fits, path, x_key: str = "params", metric: str = LOSS_KEY) -> Figure:
    """`metric` vs x (log axis): seed means with their spread (SPREAD) as error bars, the fitted
    parabolas, the optimum starred and annotated (hollow: extrapolated); diverged runs are not drawn.
    One budget: one panel, a colour per arch. Several budgets: a panel per arch, one parabola per
    budget coloured by budget. Saves a PNG at `path` and returns the figure."""
    by_arch = _by_arch(results)
    budgets = sorted({b for groups in by_arch.values() for b in groups}, key=float)
    per_budget = len(budgets) > 1
    panels = len(by_arch) if per_budget else 1
    fig = Figure(figsize=(1.5 + 6.5 * panels, 5.5), layout="constrained")
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    for i, (arch, groups) in enumerate(by_arch.items()):
        ax = axes[i if per_budget else 0]
        for budget, rows in groups.items():
            colour = _budget_colour(budgets, budget) if per_budget else f"C{i % 10}"
            _draw_points(ax, aggregate_seeds(rows, x_key, metric), x_key, metric, colour,
                         f"C={float(budget):.2g}" if per_budget else arch)
            fit = fits.get(arch, {}).get(budget)
            if fit:
                _draw_fit(ax, fit, colour, 0 if per_budget else i)
        ax.set_title(arch if per_budget else f"C={float(budgets[0]):.2g}")
    for ax in axes:
        ax.set_xscale("log")
        ax.margins(y=0.15)
        ax.set_xlabel(x_key)
        ax.legend(fontsize="small")
    axes[0].set_ylabel(f"{metric} (mean; bars: {SPREAD})")
    fig.suptitle(f"isoFLOP curves: {metric} vs {x_key} (star: fitted optimum; hollow: extrapolated)")
    fig.savefig(path, dpi=120)
    return fig


def _draw_law(ax, block: dict, per_budget: dict, key: str, colour, arch: str) -> None:
    """One arch's optima (`key` "n_opt" or "d_opt") with their bootstrap intervals, the fitted power law
    and its band."""
    law = block[f"{key}_law"]
    if law is None:
        return
    values = np.array(block[key])
    cis = [per_budget[budget_key(c)].get(f"{key}_ci") or [v, v] for c, v in zip(block["budgets"], values)]
    yerr = np.maximum([[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]], 0)
    ax.errorbar(block["budgets"], values, yerr=yerr, fmt="*", ms=12, capsize=3, color=colour)
    c = np.geomspace(min(block["budgets"]), max(block["budgets"]), 50)
    ax.plot(c, law["coefficient"] * c ** law["exponent"], color=colour,
            label=f"{arch}: {law['coefficient']:.3g} C^{law['exponent']:.3f}{_format_ci(law['exponent_ci'], '.3f')}")
    if law["band"]:
        ax.fill_between(law["band"]["budgets"], law["band"]["lo"], law["band"]["hi"], color=colour, alpha=0.2, lw=0)


def plot_power_law(fits, path, parametric=None) -> Figure:
    """N_opt and D_opt vs budget C (log-log) for each arch of a `fit_sweep` result with a power law:
    the parabola optima with their bootstrap intervals, N_opt = a C^alpha and D_opt = b C^beta with
    their bands (PERCENTILES over the resamples), and, given `fit_parametric_sweep` results, approach
    3's compute-optimal laws (dashed). Saves a PNG at `path` and returns the figure."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, (arch, arch_fits) in enumerate(fits.items()):
        block = arch_fits.get(POWER_LAW)
        if not block:
            continue
        colour = f"C{i % 10}"
        c = np.geomspace(min(block["budgets"]), max(block["budgets"]), 50)
        for ax, key in zip(axes, ("n_opt", "d_opt")):
            _draw_law(ax, block, budget_fits(arch_fits), key, colour, arch)
            law = (parametric or {}).get(arch, {}).get(f"{key}_law")
            if law:
                ax.plot(c, law["coefficient"] * c ** law["exponent"], color=colour, ls="--",
                        label=f"{arch} approach 3: C^{law['exponent']:.3f}")
    for ax, name in zip(axes, ("N_opt", "D_opt (tokens)")):
        ax.set(xscale="log", yscale="log", xlabel="budget C (FLOPs)", ylabel=name,
               title=f"Compute-optimal {name.split()[0]} vs budget (band: {PERCENTILES[0]}..{PERCENTILES[1]} pct)")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def plot_parametric(results, laws, path, x_key: str = "params", metric: str = LOSS_KEY) -> Figure:
    """Approach 3 against the data: a panel per arch of `fit_parametric_sweep` results, the seed means
    (bars: SPREAD) coloured by budget and the fitted L(N, D) along each budget's isoFLOP profile
    (dashed; D(N) interpolated in log-log between the sampled sizes' tokens). Saves a PNG at `path`."""
    by_arch = {arch: groups for arch, groups in _by_arch(results).items() if arch in laws}
    budgets = sorted({b for groups in by_arch.values() for b in groups}, key=float)
    fig = Figure(figsize=(1.5 + 6.5 * max(1, len(by_arch)), 5.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(by_arch)), sharey=True, squeeze=False)[0]
    for ax, (arch, groups) in zip(axes, by_arch.items()):
        law = laws[arch]
        for budget, rows in groups.items():
            colour = _budget_colour(budgets, budget)
            points = [p for p in aggregate_seeds(_usable(rows, metric), x_key, metric) if p.get(x_key)]
            _draw_points(ax, points, x_key, metric, colour, f"C={float(budget):.2g}")
            if len(points) >= 2:
                sizes, tokens = zip(*sorted((p[x_key], p["tokens"]) for p in points))
                n = np.geomspace(sizes[0], sizes[-1], 100)
                d = [_loglog_interp(x, sizes, tokens) for x in n]
                ax.plot(n, parametric_loss(law, n, d), color=colour, ls="--")
        ax.set(xscale="log", xlabel=x_key,
               title=f"{arch}: L = {law['E']:.3g} + {law['A']:.3g}/N^{law['alpha']:.3f} + "
                     f"{law['B']:.3g}/D^{law['beta']:.3f}")
        ax.legend(fontsize="small")
    axes[0].set_ylabel(f"{metric} (mean; bars: {SPREAD})")
    fig.suptitle("Approach 3: parametric fit (dashed) along each isoFLOP profile")
    fig.savefig(path, dpi=120)
    return fig


def _format_bootstrap(boot: dict, used: str) -> str:
    """'intervals: 2.5..97.5 percentiles of R resamples, <used>', or that there are none (0 resamples)."""
    if not boot["resamples"]:
        return "no intervals: 0 resamples"
    low, high = boot["percentiles"]
    return f"intervals: {low}..{high} percentiles of {boot['resamples']} resamples, {used}"


def _format_optimum(fit: dict | None) -> str:
    """One line describing a group's fitted optimum, with its bootstrap intervals."""
    if fit is None:
        return "no fit (needs >= 3 distinct sizes with a finite value)"
    if not fit["has_minimum"]:
        return "no minimum (fitted parabola is concave)"
    lo, hi = fit["x_range"]
    where = "" if lo <= fit["n_opt"] <= hi else "  (outside the sampled range: extrapolated)"
    unit = "" if fit["x_key"] == "params" else f" {fit['x_key']}"
    tokens = "" if fit.get("d_opt") is None else f" d_opt={fit['d_opt']:.3g}{_format_ci(fit.get('d_opt_ci'), '.3g')}"
    boot = fit.get("bootstrap")
    note = f"  ({_format_bootstrap(boot, str(boot['with_minimum']) + ' with a minimum')})" if boot else ""
    if boot and boot["resamples"] and fit["runs"] == 3:
        note = "  (no intervals: 3 runs at 3 sizes, which the parabola fits exactly)"
    return (f"optimum: n_opt={fit['n_opt']:.3g}{unit}{_format_ci(fit.get('n_opt_ci'), '.3g')}{tokens} "
            f"loss_min={fit['loss_min']:.4f}{_format_ci(fit.get('loss_min_ci'), '.4f')}{where}{note}")


def _format_budget(arch: str, budget: str, rows, fit: dict | None, metric: str) -> str:
    """One (arch, budget) block of `format_table`: a row per size, the optimum, the diverged runs."""
    points = aggregate_seeds(rows, "params", metric)
    ids = [",".join(p["run_ids"] + p["diverged"]) for p in points]
    width = max([len("run_id")] + [len(i) for i in ids])
    col = max(9, len(metric))
    lines = [f"{arch}  C={float(budget):.3g}  ({metric}: mean over seeds, spread {SPREAD})",
             f"  {'run_id':<{width}}  {'params':>10}  {'active':>10}  {'tokens':>10}  {'seeds':>5}  "
             f"{metric:>{col}}  {'spread':>15}"]
    for run_ids, p in zip(ids, points):
        mean = f"{p[metric]:{col}.4f}" if p[metric] is not None else f"{'-':>{col}}"
        spread = f"{p['min']:.4f}..{p['max']:.4f}" if p["seeds"] > 1 else "-"
        lines.append(f"  {run_ids:<{width}}  {p['params']:>10.3g}  {p['active_params']:>10.3g}  "
                     f"{p['tokens']:>10.3g}  {p['seeds']:>5}  {mean}  {spread:>15}")
    lines.append("  " + _format_optimum(fit))
    left_out = [run_id for p in points for run_id in p["diverged"]]
    if left_out:
        lines.append(f"  diverged, left out of the fit: {', '.join(left_out)}")
    return "\n".join(lines)


def _format_law(name: str, law: dict | None) -> str:
    """'NAME = a C^exponent [lo, hi]' with the coefficient's interval, or why there is none."""
    if law is None:
        return f"{name}: not fitted (no flops_per_token recorded)"
    return (f"{name} = {law['coefficient']:.3g} C^{law['exponent']:.3f}{_format_ci(law['exponent_ci'], '.3f')}"
            f"  (coefficient{_format_ci(law['coefficient_ci'], '.3g')}; {law['resamples_used']} resamples used)")


def _format_power_laws(arch: str, block: dict | None) -> str:
    """The `format_table` block of one arch's power laws across budgets."""
    if block is None:
        return f"{arch}  power laws: not fitted (needs >= 2 budgets whose parabola has a minimum)"
    return "\n".join([
        f"{arch}  power laws over C={min(block['budgets']):.3g}..{max(block['budgets']):.3g} "
        f"({len(block['budgets'])} budgets; {_format_bootstrap(block['bootstrap'], 'each budget resampled')})",
        "  " + _format_law("N_opt", block["n_opt_law"]),
        "  " + _format_law("D_opt", block["d_opt_law"]) + f"; D_opt = {block['d_opt_from']}"])


def format_table(results, fits, metric: str = LOSS_KEY) -> str:
    """Plain-text table per arch and budget: a row per size (its run_ids, params total and active,
    tokens, seeds averaged, mean `metric` and its spread, SPREAD), the optimum with its bootstrap
    intervals, the diverged runs left out; then, for an arch with several budgets, its power laws."""
    blocks = []
    for arch, groups in _by_arch(results).items():
        arch_fits = fits.get(arch, {})
        blocks += [_format_budget(arch, budget, rows, arch_fits.get(budget), metric) for budget, rows in groups.items()]
        if len(groups) > 1:
            blocks.append(_format_power_laws(arch, arch_fits.get(POWER_LAW)))
    return "\n\n".join(blocks)


def format_parametric(laws) -> str:
    """One block per arch of `fit_parametric_sweep` results: the fitted L(N, D) with intervals and the
    compute-optimal exponents it implies."""
    blocks = []
    for arch, law in laws.items():
        ci = law["ci"]
        fields = "  ".join(f"{key}={law[key]:.4g}{_format_ci(ci[key], '.4g')}" for key in PARAMETRIC_KEYS[:5])
        optimal = "  ".join(f"{name} ~ C^{law[f'{key}_law']['exponent']:.3f}{_format_ci(ci[f'{key}_exponent'], '.3f')}"
                            for name, key in (("N_opt", "n_opt"), ("D_opt", "d_opt")) if law[f"{key}_law"])
        optimal = f"{optimal} ({law['flops']})" if optimal else "no compute-optimal law (an exponent is 0)"
        bounds = f"\n  at a bound, not pinned by the data: {', '.join(law['at_bounds'])}" if law["at_bounds"] else ""
        boot = _format_bootstrap(law["bootstrap"], f"{law['bootstrap']['used']} used")
        blocks.append(f"{arch}  L(N, D) = E + A/N^alpha + B/D^beta, Huber delta {law['huber_delta']:g} on log L, "
                      f"{law['points']} points ({boot})"
                      f"\n  {fields}\n  {optimal}{bounds}")
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------- speedup


def smooth_curve(losses, smooth: float = 0.0) -> np.ndarray:
    """EMA with weight `smooth` (0 disables it; started at the first value), then a running minimum,
    so the result is non-increasing: "the best loss reached so far"."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    ema = np.empty(len(losses))
    acc = losses[0]
    for i, value in enumerate(losses):
        acc = smooth * acc + (1.0 - smooth) * value
        ema[i] = acc
    return np.minimum.accumulate(ema)


def _clean_curve(xs, losses) -> tuple[np.ndarray, np.ndarray]:
    """Points with a finite loss (None counts as missing), sorted by x."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(losses, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        raise ValueError("a speedup curve needs at least one point with a finite loss")
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def _first_reach(xs, curve, target: float) -> float | None:
    """First x where the non-increasing `curve` reaches `target`, linearly interpolated between
    points; None when the target lies outside the curve's range (no extrapolation)."""
    if target > curve[0] or target < curve[-1]:
        return None
    j = int(np.argmax(curve <= target))
    if j == 0:
        return float(xs[0])
    frac = (curve[j - 1] - target) / (curve[j - 1] - curve[j])
    return float(xs[j - 1] + frac * (xs[j] - xs[j - 1]))


def speedup_curve(base_steps, base_losses, var_steps, var_losses, smooth: float = 0.0) -> dict:
    """Speedup versus steps (REFERENCE section 6): speedup(s) = s' / s, where s' is the first
    baseline step at which the baseline reaches the variant's eval loss at step s.

    Both curves are smoothed by `smooth_curve` (EMA with weight `smooth`, then running minimum);
    s' is linearly interpolated between the baseline's eval points. Where the baseline never reaches
    the variant's loss within its run (or already beat it at its first eval point), and at s = 0,
    the point is undefined: None in "baseline_steps_to_match" and "speedup"; nothing is extrapolated.
    Pass wall-clock seconds instead of steps for speedup versus wall time.
    Returns {"steps", "baseline_steps_to_match", "speedup", "baseline", "variant"}, where the last
    two hold each curve's {"steps", "losses", "smoothed"} (for `plot_speedup`).
    """
    bx, by = _clean_curve(base_steps, base_losses)
    vx, vy = _clean_curve(var_steps, var_losses)
    b_smooth, v_smooth = smooth_curve(by, smooth), smooth_curve(vy, smooth)
    match = [_first_reach(bx, b_smooth, target) for target in v_smooth]
    speedup = [m / s if m is not None and s > 0 else None for m, s in zip(match, vx)]
    return {"steps": vx.tolist(), "baseline_steps_to_match": match, "speedup": speedup,
            "baseline": {"steps": bx.tolist(), "losses": by.tolist(), "smoothed": b_smooth.tolist()},
            "variant": {"steps": vx.tolist(), "losses": vy.tolist(), "smoothed": v_smooth.tolist()}}


def plot_speedup(curves, path, xlabel: str = "step") -> Figure:
    """Two panels for {label: speedup_curve result} sharing one baseline: eval loss vs x (raw faint,
    smoothed solid) for the baseline and each variant, and speedup vs x (undefined points omitted).
    Saves a PNG at `path` and returns the figure."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_loss, ax_speed = fig.subplots(1, 2)
    for i, (label, curve) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        for part, part_colour, part_label in ((curve["baseline"], "0.35", "baseline" if i == 0 else None),
                                              (curve["variant"], colour, label)):
            ax_loss.plot(part["steps"], part["losses"], color=part_colour, lw=0.8, alpha=0.3)
            ax_loss.plot(part["steps"], part["smoothed"], color=part_colour, label=part_label)
        defined = [(s, v) for s, v in zip(curve["steps"], curve["speedup"]) if v is not None]
        ax_speed.plot([s for s, _ in defined], [v for _, v in defined], color=colour, marker=".", label=label)
    ax_speed.axhline(1.0, color="0.5", ls=":")
    ax_loss.set(xlabel=xlabel, ylabel="eval loss", title="Eval loss")
    ax_speed.set(xlabel=xlabel, ylabel="speedup (baseline x to match / x)", title=f"Speedup vs {xlabel}")
    ax_loss.legend(fontsize="small")
    ax_speed.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def summarize_speedup(curve) -> dict:
    """Headline numbers of a `speedup_curve` result: the speedup at the variant's last step where it is
    defined, the median over the defined points of the second half of the run, the maximum, and the
    fraction of points where it is defined. Values are None where no point is defined."""
    steps = np.asarray(curve["steps"], dtype=float)
    defined = [(s, v) for s, v in zip(steps, curve["speedup"]) if v is not None]
    late = [v for s, v in defined if s >= steps.max() / 2]
    return {"last_defined": defined[-1][1] if defined else None,
            "last_defined_at": defined[-1][0] if defined else None,
            "median_second_half": float(np.median(late)) if late else None,
            "max": max(v for _, v in defined) if defined else None,
            "defined_fraction": len(defined) / len(steps)}


def _draw_speedup_pair(ax_loss, ax_speed, curve, labels, xlabel: str) -> None:
    """Eval loss (raw faint, smoothed solid) of both sides, and the defined speedup points, vs x."""
    for part, colour, label in ((curve["baseline"], "0.35", labels[0]), (curve["variant"], "C0", labels[1])):
        ax_loss.plot(part["steps"], part["losses"], color=colour, lw=0.8, alpha=0.3)
        ax_loss.plot(part["steps"], part["smoothed"], color=colour, label=label)
    defined = [(s, v) for s, v in zip(curve["steps"], curve["speedup"]) if v is not None]
    ax_speed.plot([s for s, _ in defined], [v for _, v in defined], color="C0", marker=".")
    ax_speed.axhline(1.0, color="0.5", ls=":")
    ax_loss.set(xlabel=xlabel, ylabel="eval loss", title=f"Eval loss vs {xlabel}")
    ax_speed.set(xlabel=xlabel, ylabel=f"speedup (baseline {xlabel} to match / {xlabel})",
                 title=f"{labels[1]} speedup vs {xlabel}")
    ax_loss.legend(fontsize="small")


def side_label(side: dict) -> str:
    """The name of one side of a speedup report: its architecture, with the options only it has."""
    return side.get("label", side["arch"])


def plot_speedup_report(report, path) -> Figure:
    """The speedup figure of `experiments.speedup`: loss and speedup against steps (top) and wall time
    (bottom), the learning-rate sweep of both sides, and the headline numbers.
    `report` is the curves.json content. Saves a PNG at `path` and returns the figure."""
    base, var = report["baseline"], report["variant"]
    labels = tuple(f"{side_label(side)} (lr {side['learning_rate']:g})" for side in (base, var))
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3)
    _draw_speedup_pair(axes[0, 0], axes[0, 1], report["steps"], labels, "step")
    _draw_speedup_pair(axes[1, 0], axes[1, 1], report["wall"], labels, "seconds")
    ax_lr = axes[0, 2]
    for side, colour in ((base, "0.35"), (var, "C0")):
        lrs = sorted(side["sweep"], key=float)
        ax_lr.plot([float(lr) for lr in lrs], [side["sweep"][lr] for lr in lrs], color=colour, marker="o",
                   label=side_label(side))
    ax_lr.set(xscale="log", xlabel="peak learning rate", ylabel="final eval loss", title="LR sweep (same grid)")
    grid = sorted({float(lr) for side in (base, var) for lr in side["sweep"]})
    ax_lr.set_xticks(grid, [f"{lr:g}" for lr in grid])
    ax_lr.minorticks_off()
    ax_lr.legend(fontsize="small")
    axes[1, 2].axis("off")
    axes[1, 2].text(0.0, 1.0, format_speedup_report(report), va="top", family="monospace", fontsize=9)
    fig.suptitle(f"{side_label(var)} vs {side_label(base)}: speedup in steps to reach the same eval loss")
    fig.savefig(path, dpi=110)
    return fig


def format_speedup_headlines(summary) -> list[str]:
    """One line per x ("steps", "wall") of a {x: `summarize_speedup` result} dict: the speedup at the
    last defined point, the median over the second half, and where it is defined."""
    fmt = lambda v: "undefined" if v is None else f"{v:.2f}x"
    return [f"speedup vs {key}: last {fmt(s['last_defined'])}, median 2nd half {fmt(s['median_second_half'])}, "
            f"defined at {s['defined_fraction']:.0%} of evals" for key, s in summary.items()]


def format_speedup_report(report) -> str:
    """The headline numbers of a speedup report, one per line."""
    setup, timing = report["setup"], report["per_step_time"]
    lines = [f"seq_len {setup['seq_len']}, batch {setup['batch_size']}, {setup['steps']} steps",
             f"tokens {setup['tokens']:.3g}, eval every {setup['eval_every']} steps"]
    for side in ("baseline", "variant"):
        s = report[side]
        edge = " (best LR at the grid's edge)" if s.get("best_at_grid_edge") else ""
        causal = s.get("final_eval_causal_loss", s["final_eval_loss"])
        lines.append(f"{side_label(s)}: {s['params']:,} params, lr {s['learning_rate']:g}{edge}, "
                     f"final eval {s['final_eval_loss']:.4f}"
                     + (f", causal pass (as sampled) {causal:.4f}" if causal != s["final_eval_loss"] else ""))
    difference = report.get("difference") or {}
    if len(difference.get("seeds", [])) > 1:
        lines.append(f"variant - baseline, {difference['metric']}: {difference['mean']:+.4f} "
                     f"(sd {difference['std']:.4f} over seeds {', '.join(map(str, difference['seeds']))})")
    lines.append(f"step time: {timing['baseline_s'] * 1e3:.1f} ms vs {timing['variant_s'] * 1e3:.1f} ms "
                 f"({timing['overhead']:+.0%})")
    return "\n".join(lines + format_speedup_headlines(report["summary"]))


def speedup_from_runs(baseline_run, variant_run, smooth: float = 0.2) -> dict:
    """Speedup of two training runs' eval curves (their `metrics.jsonl`), against steps and against the
    runs' own wall clocks (which include compilation and evals, unlike curves.json's measured step
    times): {"baseline": {"arch": run directory name, "run_dir"}, "variant": ..., "steps", "wall"
    (`speedup_curve` results), "summary": {"steps", "wall"} (`summarize_speedup`)}, the shape of
    curves.json as far as two runs give it."""
    sides = {side: {"arch": epath.Path(run_dir).name, "run_dir": str(run_dir)}
             for side, run_dir in (("baseline", baseline_run), ("variant", variant_run))}
    metrics = [load_metrics(run_dir) for run_dir in (baseline_run, variant_run)]
    curves = {}
    for key, x_key in (("steps", "step"), ("wall", "wall_s")):
        (bx, by), (vx, vy) = (eval_curve(m, x_key) for m in metrics)
        curves[key] = speedup_curve(bx, by, vx, vy, smooth=smooth)
    return {**sides, **curves, "summary": {key: summarize_speedup(curve) for key, curve in curves.items()}}


def plot_speedup_curves(report, path) -> Figure:
    """Eval loss and speedup against steps (top) and wall time (bottom) of a curves.json content or a
    `speedup_from_runs` result, headlines in the title. Saves a PNG at `path` and returns the figure."""
    labels = (side_label(report["baseline"]), side_label(report["variant"]))
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    _draw_speedup_pair(axes[0, 0], axes[0, 1], report["steps"], labels, "step")
    _draw_speedup_pair(axes[1, 0], axes[1, 1], report["wall"], labels, "seconds")
    fig.suptitle(f"{labels[1]} vs {labels[0]}\n" + "; ".join(format_speedup_headlines(report["summary"])),
                 fontsize=10)
    fig.savefig(path, dpi=110)
    return fig
