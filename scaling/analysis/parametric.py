"""Chinchilla approach 3 (Hoffmann et al. 2022, eq. 2 and appendix D.2): L(N, D) = E + A / N^alpha + B / D^beta
fitted to a sweep's runs over several budgets, with bootstrap intervals.
"""
import math

import numpy as np
from threadpoolctl import threadpool_limits

from scaling.analysis.bootstrap import RESAMPLES, bootstrap_note, interval, resample
from scaling.analysis.isoflop import fittable
from scaling.analysis.results import LOSS_KEY, aggregate_seeds, by_arch, metric_value, usable

HUBER_DELTA = 1e-3
# Starting points of approach 3 (Hoffmann et al. 2022, appendix D.2): every (a, b, e, alpha, beta) of this grid.
HOFFMANN_GRID = (np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
                 np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5))
# L-BFGS-B bounds on (a, b, e, alpha, beta): wide enough for any real law, they keep exp() finite and the
# exponents non-negative where the data do not pin the law down (a fit at a bound is flagged).
PARAMETRIC_BOUNDS = ((-50.0, 50.0), (-50.0, 50.0), (-50.0, 50.0), (0.0, 5.0), (0.0, 5.0))


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
    from scipy.optimize import minimize  # here, not at the top: scipy.optimize takes ~0.9 s to import

    with threadpool_limits(limits=1, user_api="blas"):
        runs = [minimize(_objective, start, args=(*data, delta), jac=True, method="L-BFGS-B", bounds=PARAMETRIC_BOUNDS,
                         options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 2000}) for start in starts]
    best = min(runs, key=lambda run: run.fun)
    return best.x, float(best.fun)


def _parametric_data(points, x_key: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log N, log D, log L) of the points with a positive N (x_key), D (tokens) and a finite metric."""
    n = np.array([p.get(x_key) for p in points], dtype=float)
    d = np.array([p.get("tokens") for p in points], dtype=float)
    loss = np.array([metric_value(p, metric) for p in points], dtype=float)
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
    for arch, groups in by_arch(results).items():
        budget_rows = [usable(rows, metric) for rows in groups.values() if fittable(rows, x_key, metric)]
        if len(budget_rows) < 2:
            continue
        law = fit_parametric(aggregate_seeds([r for rows in budget_rows for r in rows], x_key, metric), x_key,
                             metric, huber_delta)
        theta = [math.log(law["A"]), math.log(law["B"]), math.log(law["E"]), law["alpha"], law["beta"]]
        rng = np.random.default_rng(seed)
        samples = [_parametric_refit(theta, [r for rows in budget_rows for r in resample(rows, rng)], x_key, metric,
                                     huber_delta) for _ in range(resamples)]
        samples = np.array(samples, dtype=float).reshape(resamples, len(PARAMETRIC_KEYS))
        law["ci"] = {key: interval(samples[:, i]) for i, key in enumerate(PARAMETRIC_KEYS)}
        law["bootstrap"] = {**bootstrap_note(resamples, seed), "used": int(np.isfinite(samples[:, 0]).sum())}
        laws[arch] = law
    return laws
