"""isoFLOP, power-law and approach-3 figures. They use matplotlib's object API (a `Figure` saved through
the Agg canvas), so this module never touches pyplot's global state or the backend of the notebook or
script that imports it. matplotlib is imported at the first figure (`new_figure`): it takes about a second
to import, which a command that stops at bad input, or ends without a figure, should not spend.
"""
from typing import TYPE_CHECKING

import numpy as np

from scaling.analysis.bootstrap import PERCENTILES
from scaling.analysis.isoflop import POWER_LAW, budget_fits, loglog_interp
from scaling.analysis.parametric import parametric_loss
from scaling.analysis.results import LOSS_KEY, SPREAD, aggregate_seeds, budget_key, by_arch, usable
from scaling.analysis.tables import format_ci

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> "Figure":
    """An empty figure of `width` x `height` inches with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


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
    from matplotlib import colormaps

    return colormaps["viridis"](0.9 * budgets.index(budget) / max(1, len(budgets) - 1))


def plot_isoflop(results, fits, path, x_key: str = "params", metric: str = LOSS_KEY) -> "Figure":
    """`metric` vs x (log axis): seed means with their spread (SPREAD) as error bars, the fitted
    parabolas, the optimum starred and annotated (hollow: extrapolated); diverged runs are not drawn.
    One budget: one panel, a colour per arch. Several budgets: a panel per arch, one parabola per
    budget coloured by budget. Saves a PNG at `path` and returns the figure."""
    groups_by_arch = by_arch(results)
    budgets = sorted({b for groups in groups_by_arch.values() for b in groups}, key=float)
    per_budget = len(budgets) > 1
    panels = len(groups_by_arch) if per_budget else 1
    fig = new_figure(1.5 + 6.5 * panels, 5.5)
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    for i, (arch, groups) in enumerate(groups_by_arch.items()):
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
            label=f"{arch}: {law['coefficient']:.3g} C^{law['exponent']:.3f}{format_ci(law['exponent_ci'], '.3f')}")
    if law["band"]:
        ax.fill_between(law["band"]["budgets"], law["band"]["lo"], law["band"]["hi"], color=colour, alpha=0.2, lw=0)


def plot_power_law(fits, path, parametric=None) -> "Figure":
    """N_opt and D_opt vs budget C (log-log) for each arch of a `fit_sweep` result with a power law:
    the parabola optima with their bootstrap intervals, N_opt = a C^alpha and D_opt = b C^beta with
    their bands (PERCENTILES over the resamples), and, given `fit_parametric_sweep` results, approach
    3's compute-optimal laws (dashed). Saves a PNG at `path` and returns the figure."""
    fig = new_figure(12, 4.8)
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


def plot_parametric(results, laws, path, x_key: str = "params", metric: str = LOSS_KEY) -> "Figure":
    """Approach 3 against the data: a panel per arch of `fit_parametric_sweep` results, the seed means
    (bars: SPREAD) coloured by budget and the fitted L(N, D) along each budget's isoFLOP profile
    (dashed; D(N) interpolated in log-log between the sampled sizes' tokens). Saves a PNG at `path`."""
    groups_by_arch = {arch: groups for arch, groups in by_arch(results).items() if arch in laws}
    budgets = sorted({b for groups in groups_by_arch.values() for b in groups}, key=float)
    fig = new_figure(1.5 + 6.5 * max(1, len(groups_by_arch)), 5.5)
    axes = fig.subplots(1, max(1, len(groups_by_arch)), sharey=True, squeeze=False)[0]
    for ax, (arch, groups) in zip(axes, groups_by_arch.items()):
        law = laws[arch]
        for budget, rows in groups.items():
            colour = _budget_colour(budgets, budget)
            points = [p for p in aggregate_seeds(usable(rows, metric), x_key, metric) if p.get(x_key)]
            _draw_points(ax, points, x_key, metric, colour, f"C={float(budget):.2g}")
            if len(points) >= 2:
                sizes, tokens = zip(*sorted((p[x_key], p["tokens"]) for p in points))
                n = np.geomspace(sizes[0], sizes[-1], 100)
                d = [loglog_interp(x, sizes, tokens) for x in n]
                ax.plot(n, parametric_loss(law, n, d), color=colour, ls="--")
        ax.set(xscale="log", xlabel=x_key,
               title=f"{arch}: L = {law['E']:.3g} + {law['A']:.3g}/N^{law['alpha']:.3f} + "
                     f"{law['B']:.3g}/D^{law['beta']:.3f}")
        ax.legend(fontsize="small")
    axes[0].set_ylabel(f"{metric} (mean; bars: {SPREAD})")
    fig.suptitle("Approach 3: parametric fit (dashed) along each isoFLOP profile")
    fig.savefig(path, dpi=120)
    return fig
