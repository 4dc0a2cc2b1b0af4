"""Analysis of isoFLOP sweeps: loading, parabola and power-law fits, speedup curves, plots.

Inputs follow the sweep contract (DESIGN.md, "what a sweep writes"): `<workdir>/results.jsonl`
holds one JSON object per finished run, `<workdir>/runs/<run_id>/metrics.jsonl` one per log step.
Fits are plain dicts of floats and lists, so they can be written to `fits.json` as they are.
Plots use matplotlib's object API (a `Figure` saved through the Agg canvas), so this module never
touches pyplot's global state or the backend of the notebook or script that imports it.
"""
from __future__ import annotations

import json

import numpy as np
from etils import epath
from matplotlib.figure import Figure
from scipy.optimize import least_squares

LOSS_KEY = "final_eval_loss"
MARKERS = "osD^vP<>X"


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
    """Concatenate the `results.jsonl` records of one or more sweep workdirs."""
    if not workdirs:
        raise ValueError("load_results needs at least one sweep workdir")
    return [row for workdir in workdirs for row in _read_jsonl(epath.Path(workdir) / "results.jsonl")]


def load_metrics(run_dir) -> list[dict]:
    """The per-step records of one run, from `<run_dir>/metrics.jsonl`."""
    return _read_jsonl(epath.Path(run_dir) / "metrics.jsonl")


def eval_curve(metrics, x_key: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, eval_loss) at the eval steps of a run's metrics; x_key "wall_s" gives wall-clock seconds."""
    rows = [m for m in metrics if m.get("eval_loss") is not None and m.get(x_key) is not None]
    return (np.array([m[x_key] for m in rows], dtype=float),
            np.array([m["eval_loss"] for m in rows], dtype=float))


def budget_key(budget) -> str:
    """Canonical string for a FLOP budget (the key used by `fit_sweep`): `repr(float)`, e.g. '6e+18'."""
    return repr(float(budget))


def _groups(results) -> dict[tuple[str, str], list[dict]]:
    """Results grouped by (arch, budget key), sorted by arch then budget."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        groups.setdefault((row["arch"], budget_key(row["budget"])), []).append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], float(item[0][1]))))


# ----------------------------------------------------------------------------- isoFLOP fits


def _finite_xy(points, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, final eval loss) of the points with a positive x and a finite loss."""
    x = np.array([p.get(x_key) for p in points], dtype=float)
    y = np.array([p.get(LOSS_KEY) for p in points], dtype=float)
    keep = np.isfinite(x) & (x > 0) & np.isfinite(y)
    return x[keep], y[keep]


def _uncenter(coeffs, center: float) -> list[float]:
    """Coefficients of a u^2 + b u + c with u = t - center, rewritten as polynomial in t."""
    a, b, c = coeffs
    return [float(a), float(b - 2 * a * center), float(a * center**2 - b * center + c)]


def fit_isoflop(points, x_key: str = "params", robust: bool = False, huber_delta: float = 1e-3) -> dict:
    """Fit final eval loss against log10(x) with a parabola; its vertex is the compute-optimal x.

    Points without a finite `final_eval_loss` are left out. `robust=True` minimises a Huber loss
    (scipy least_squares, loss="huber", f_scale=huber_delta in loss units; the small default makes it
    close to least absolute deviations, so one bad run inside the sampled range does not drag the
    vertex; a bad run at either end of the range has high leverage and can still move it).
    Returns {"coeffs": [a, b, c] in log10 x, "has_minimum": a > 0, "n_opt": 10**(-b/2a) or None,
    "loss_min" or None, "points": number used, "x_key", "x_range": [min x, max x]}.
    Raises ValueError with fewer than 3 distinct x values.
    """
    x, y = _finite_xy(points, x_key)
    n_sizes = len(np.unique(x))
    if n_sizes < 3:
        raise ValueError(f"fit_isoflop needs >= 3 distinct {x_key!r} values with a finite "
                         f"{LOSS_KEY}, got {n_sizes}")
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


def fit_sweep(results, x_key: str = "params", robust: bool = False) -> dict[str, dict[str, dict]]:
    """`fit_isoflop` per arch and budget: {arch: {budget_key: fit}}.

    Groups with fewer than 3 distinct sizes (e.g. a sweep still running) are left out.
    """
    fits: dict[str, dict[str, dict]] = {}
    for (arch, budget), group in _groups(results).items():
        if len(np.unique(_finite_xy(group, x_key)[0])) >= 3:
            fits.setdefault(arch, {})[budget] = fit_isoflop(group, x_key, robust)
    return fits


def fit_power_law(budgets, values) -> dict:
    """Least-squares fit of values = coefficient * budgets**exponent in log-log space."""
    c = np.asarray(budgets, dtype=float)
    v = np.asarray(values, dtype=float)
    if len(np.unique(c)) < 2 or np.any(c <= 0) or np.any(v <= 0):
        raise ValueError("fit_power_law needs >= 2 distinct budgets and positive values")
    exponent, intercept = np.polyfit(np.log10(c), np.log10(v), 1)
    return {"coefficient": float(10**intercept), "exponent": float(exponent)}


def fit_scaling_laws(fits) -> dict[str, dict]:
    """Per arch: budgets, n_opt and loss_min of the fits with a minimum, and N_opt = a C^alpha.

    "power_law" is the `fit_power_law` result, or None with fewer than 2 such budgets.
    """
    laws = {}
    for arch, by_budget in fits.items():
        optima = sorted((float(b), f["n_opt"], f["loss_min"]) for b, f in by_budget.items() if f["has_minimum"])
        budgets, n_opt, loss_min = (list(col) for col in zip(*optima)) if optima else ([], [], [])
        law = fit_power_law(budgets, n_opt) if len(budgets) >= 2 else None
        laws[arch] = {"budgets": budgets, "n_opt": n_opt, "loss_min": loss_min, "power_law": law}
    return laws


# ----------------------------------------------------------------------------- isoFLOP output


def _draw_fit(ax, fit: dict, colour: str, stagger: int) -> None:
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


def plot_isoflop(results, fits, path, x_key: str = "params") -> Figure:
    """Final eval loss vs x (log axis): one colour per arch, one marker per budget, fitted parabolas,
    optimum starred and annotated. Saves a PNG at `path` and returns the figure."""
    groups = _groups(results)
    archs = sorted({arch for arch, _ in groups})
    budgets = sorted({budget for _, budget in groups}, key=float)
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    for (arch, budget), group in groups.items():
        colour = f"C{archs.index(arch) % 10}"
        x, y = _finite_xy(group, x_key)
        ax.scatter(x, y, color=colour, marker=MARKERS[budgets.index(budget) % len(MARKERS)],
                   label=f"{arch}, C={float(budget):.2g}")
        fit = fits.get(arch, {}).get(budget)
        if fit:
            _draw_fit(ax, fit, colour, archs.index(arch))
    ax.set_xscale("log")
    ax.margins(y=0.15)
    ax.set_xlabel(x_key)
    ax.set_ylabel("final eval loss")
    ax.set_title(f"isoFLOP curves: final eval loss vs {x_key} (star: fitted optimum; hollow: extrapolated)")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def plot_power_law(laws, path) -> Figure:
    """Optimal size vs budget (log-log) per arch, with the fitted N_opt = a C^alpha line.
    Saves a PNG at `path` and returns the figure."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (arch, law) in enumerate(laws.items()):
        colour = f"C{i % 10}"
        ax.scatter(law["budgets"], law["n_opt"], color=colour, marker="*", s=120,
                   label=None if law["power_law"] else arch)
        if law["power_law"]:
            a, alpha = law["power_law"]["coefficient"], law["power_law"]["exponent"]
            c = np.geomspace(min(law["budgets"]), max(law["budgets"]), 50)
            ax.plot(c, a * c**alpha, color=colour, label=f"{arch}: {a:.3g} C^{alpha:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("budget C (FLOPs)")
    ax.set_ylabel("N_opt")
    ax.set_title("Compute-optimal size vs budget")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return fig


def _format_optimum(fit: dict | None) -> str:
    """One line describing a group's fitted optimum."""
    if fit is None:
        return "no fit (needs >= 3 distinct sizes with a finite eval loss)"
    if not fit["has_minimum"]:
        return "no minimum (fitted parabola is concave)"
    lo, hi = fit["x_range"]
    where = "" if lo <= fit["n_opt"] <= hi else "  (outside the sampled range: extrapolated)"
    unit = "" if fit["x_key"] == "params" else f" {fit['x_key']}"
    return f"optimum: n_opt={fit['n_opt']:.3g}{unit} loss_min={fit['loss_min']:.4f}{where}"


def format_table(results, fits) -> str:
    """Plain-text table per arch and budget: run_id, params (total and active), tokens, final eval loss,
    then the optimum."""
    width = max([len("run_id")] + [len(str(r["run_id"])) for r in results])
    blocks = []
    for (arch, budget), group in _groups(results).items():
        lines = [f"{arch}  C={float(budget):.3g}",
                 f"  {'run_id':<{width}}  {'params':>10}  {'active':>10}  {'tokens':>10}  {'eval_loss':>9}"]
        for r in sorted(group, key=lambda r: r["params"]):
            loss = r.get(LOSS_KEY)
            loss_text = f"{loss:9.4f}" if loss is not None else f"{'-':>9}"
            active = r.get("active_params", r["params"])
            lines.append(f"  {r['run_id']:<{width}}  {r['params']:>10.3g}  {active:>10.3g}  {r['tokens']:>10.3g}  "
                         f"{loss_text}")
        lines.append("  " + _format_optimum(fits.get(arch, {}).get(budget)))
        blocks.append("\n".join(lines))
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


def plot_speedup_report(report, path) -> Figure:
    """The speedup figure of `experiments.speedup`: loss and speedup against steps (top) and wall time
    (bottom), the learning-rate sweep of both sides, and the headline numbers.
    `report` is the curves.json content. Saves a PNG at `path` and returns the figure."""
    base, var = report["baseline"], report["variant"]
    labels = (f"{base['arch']} (lr {base['learning_rate']:g})", f"{var['arch']} (lr {var['learning_rate']:g})")
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3)
    _draw_speedup_pair(axes[0, 0], axes[0, 1], report["steps"], labels, "step")
    _draw_speedup_pair(axes[1, 0], axes[1, 1], report["wall"], labels, "seconds")
    ax_lr = axes[0, 2]
    for side, colour in ((base, "0.35"), (var, "C0")):
        lrs = sorted(side["sweep"], key=float)
        ax_lr.plot([float(lr) for lr in lrs], [side["sweep"][lr] for lr in lrs], color=colour, marker="o",
                   label=side["arch"])
    ax_lr.set(xscale="log", xlabel="peak learning rate", ylabel="final eval loss", title="LR sweep (same grid)")
    grid = sorted({float(lr) for side in (base, var) for lr in side["sweep"]})
    ax_lr.set_xticks(grid, [f"{lr:g}" for lr in grid])
    ax_lr.minorticks_off()
    ax_lr.legend(fontsize="small")
    axes[1, 2].axis("off")
    axes[1, 2].text(0.0, 1.0, format_speedup_report(report), va="top", family="monospace", fontsize=9)
    fig.suptitle(f"{var['arch']} vs {base['arch']}: speedup in steps to reach the same eval loss")
    fig.savefig(path, dpi=110)
    return fig


def format_speedup_report(report) -> str:
    """The headline numbers of a speedup report, one per line."""
    fmt = lambda v: "undefined" if v is None else f"{v:.2f}x"
    setup, timing = report["setup"], report["per_step_time"]
    lines = [f"seq_len {setup['seq_len']}, batch {setup['batch_size']}, {setup['steps']} steps",
             f"tokens {setup['tokens']:.3g}, eval every {setup['eval_every']} steps"]
    for side in ("baseline", "variant"):
        s = report[side]
        edge = " (best LR at the grid's edge)" if s.get("best_at_grid_edge") else ""
        lines.append(f"{s['arch']}: {s['params']:,} params, lr {s['learning_rate']:g}{edge}, "
                     f"final eval {s['final_eval_loss']:.4f}")
    lines.append(f"step time: {timing['baseline_s'] * 1e3:.1f} ms vs {timing['variant_s'] * 1e3:.1f} ms "
                 f"({timing['overhead']:+.0%})")
    for key in ("steps", "wall"):
        summary = report["summary"][key]
        lines.append(f"speedup vs {key}: last {fmt(summary['last_defined'])}, "
                     f"median 2nd half {fmt(summary['median_second_half'])}, "
                     f"defined at {summary['defined_fraction']:.0%} of evals")
    return "\n".join(lines)
