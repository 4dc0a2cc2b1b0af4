"""Chinchilla approach 2 (Hoffmann et al. 2022): a parabola per isoFLOP profile, the N_opt and D_opt power
laws across budgets, and each architecture against the baseline, all with bootstrap intervals. Fits are
plain dicts of floats and lists, written to `fits.json` as they are.
"""
import math

import numpy as np

from scaling.analysis.bootstrap import PERCENTILES, RESAMPLES, bootstrap_note, interval, resample
from scaling.analysis.results import LOSS_KEY, aggregate_seeds, by_arch, metric_value, usable

POWER_LAW = "power_law"
D_OPT_FROM = "C / flops_per_token(N_opt), flops_per_token interpolated linearly in log-log between the sampled sizes"


def _finite_xy(points, x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, metric) of the points with a positive x and a finite metric."""
    x = np.array([p.get(x_key) for p in points], dtype=float)
    y = np.array([metric_value(p, metric) for p in points], dtype=float)
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
        from scipy.optimize import least_squares  # here, not at the top: scipy.optimize takes ~0.9 s to import

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


def loglog_interp(x: float, xs, ys) -> float:
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
    return budget / loglog_interp(fit["n_opt"], *zip(*sampled))


def _fit_budget(rows, x_key: str, robust: bool, metric: str) -> dict:
    """`fit_isoflop` on the seed means of one (arch, budget), plus "d_opt", "metric", "runs" (runs
    averaged), "seeds" (their seed values) and "diverged" (run_ids left out)."""
    points = aggregate_seeds(rows, x_key, metric)
    fit = fit_isoflop(points, x_key, robust, metric=metric)
    fit.update(d_opt=_d_opt(points, fit, float(rows[0]["budget"]), x_key), metric=metric,
               runs=sum(p["seeds"] for p in points),
               seeds=sorted({r["seed"] for r in usable(rows, metric) if r.get("seed") is not None}),
               diverged=[run_id for p in points for run_id in p["diverged"]])
    return fit


def fittable(rows, x_key: str, metric: str) -> bool:
    """True when the usable runs span >= 3 distinct sizes (a parabola)."""
    return len(np.unique(_finite_xy(usable(rows, metric), x_key, metric)[0])) >= 3


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
    samples = [[(math.nan,) * 3 if _exact(rows) else _optimum(resample(rows, rng), x_key, robust, metric)
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
                   exponent_ci=interval(exponents),
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
    for arch, groups in by_arch(results).items():
        budgets = [b for b, rows in groups.items() if fittable(rows, x_key, metric)]
        if not budgets:
            continue
        fitted = [_fit_budget(groups[b], x_key, robust, metric) for b in budgets]
        samples = _bootstrap_optima([usable(groups[b], metric) for b in budgets], x_key, robust, metric,
                                    resamples, seed)
        for fit, sample in zip(fitted, samples.transpose(1, 0, 2)):
            fit.update(n_opt_ci=interval(sample[:, 0]), d_opt_ci=interval(sample[:, 1]),
                       loss_min_ci=interval(sample[:, 2]),
                       bootstrap={**bootstrap_note(resamples, seed),
                                  "with_minimum": int(np.isfinite(sample[:, 0]).sum())})
        fits[arch] = dict(zip(budgets, fitted))
        laws = _power_laws([float(b) for b in budgets], fitted, samples)
        if laws:
            fits[arch][POWER_LAW] = {**laws, "bootstrap": bootstrap_note(resamples, seed)}
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
    groups = by_arch(results)
    if baseline not in groups:
        return {}
    comparison: dict[str, dict[str, dict]] = {}
    for arch, arch_groups in groups.items():
        budgets = [b for b in arch_groups if arch != baseline and b in groups[baseline]
                   and fittable(arch_groups[b], x_key, metric) and fittable(groups[baseline][b], x_key, metric)]
        if not budgets:
            continue
        rows = [usable(groups[baseline][b], metric) for b in budgets] + [usable(arch_groups[b], metric)
                                                                           for b in budgets]
        point = np.array([_optimum(r, x_key, False, metric) for r in rows])[None]
        measured = _against(point, [float(b) for b in budgets])
        sampled = _against(_bootstrap_optima(rows, x_key, False, metric, resamples, seed), [float(b) for b in budgets])
        comparison[arch] = {
            budget: {**{key: _finite(value[0, j]) for key, value in measured.items()},
                     **{f"{key}_ci": interval(value[:, j]) for key, value in sampled.items()}}
            for j, budget in enumerate(budgets)}
    return comparison
