"""Speedup versus steps and versus wall time (REFERENCE section 6) of two runs' eval curves: the curves,
their headline numbers, figures and text.
"""
from typing import TYPE_CHECKING

import numpy as np
from etils import epath

from scaling.analysis.figures import new_figure
from scaling.analysis.results import eval_curve, load_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def plot_speedup(curves, path, xlabel: str = "step") -> "Figure":
    """Two panels for {label: speedup_curve result} sharing one baseline: eval loss vs x (raw faint,
    smoothed solid) for the baseline and each variant, and speedup vs x (undefined points omitted).
    Saves a PNG at `path` and returns the figure."""
    fig = new_figure(11, 4.5)
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


def plot_speedup_report(report, path) -> "Figure":
    """The speedup figure of `experiments.speedup`: loss and speedup against steps (top) and wall time
    (bottom), the learning-rate sweep of both sides, and the headline numbers.
    `report` is the curves.json content. Saves a PNG at `path` and returns the figure."""
    base, var = report["baseline"], report["variant"]
    labels = tuple(f"{side_label(side)} (lr {side['learning_rate']:g})" for side in (base, var))
    fig = new_figure(15, 8.5)
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


def plot_speedup_curves(report, path) -> "Figure":
    """Eval loss and speedup against steps (top) and wall time (bottom) of a curves.json content or a
    `speedup_from_runs` result, headlines in the title. Saves a PNG at `path` and returns the figure."""
    labels = (side_label(report["baseline"]), side_label(report["variant"]))
    fig = new_figure(11, 8.5)
    axes = fig.subplots(2, 2)
    _draw_speedup_pair(axes[0, 0], axes[0, 1], report["steps"], labels, "step")
    _draw_speedup_pair(axes[1, 0], axes[1, 1], report["wall"], labels, "seconds")
    fig.suptitle(f"{labels[1]} vs {labels[0]}\n" + "; ".join(format_speedup_headlines(report["summary"])),
                 fontsize=10)
    fig.savefig(path, dpi=110)
    return fig
