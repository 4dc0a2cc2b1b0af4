"""Sweep outputs read back (DESIGN.md, "what a sweep writes"), from local or gs:// workdirs through
etils.epath: `<workdir>/results.jsonl` (one JSON object per finished run; several budgets and seeds may
share one file; a run with status "diverged" is named but never fitted), `<workdir>/runs/<run_id>/
metrics.jsonl` (one per log step) and a speedup workdir's `curves.json`; runs grouped by architecture
and budget, and seeds averaged into one point per size.
"""
import json
import math

import numpy as np
from etils import epath

LOSS_KEY = "final_eval_loss"
DIVERGED = "diverged"
SPREAD = "min..max over seeds"


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


def by_arch(results) -> dict[str, dict[str, list[dict]]]:
    """Results as {arch: {budget key: rows}}, archs and budgets sorted."""
    archs: dict[str, dict[str, list[dict]]] = {}
    for (arch, budget), rows in _groups(results).items():
        archs.setdefault(arch, {})[budget] = rows
    return archs


def diverged(row) -> bool:
    """True for a run the sweep marked diverged (a record without a status is a complete run)."""
    return row.get("status") == DIVERGED


def metric_value(row, metric: str) -> float:
    """The row's metric as a float, NaN where it is missing (e.g. final_eval_bpb null)."""
    value = row.get(metric)
    return math.nan if value is None else float(value)


def usable(rows, metric: str) -> list[dict]:
    """The runs a fit may use: not diverged, with a finite metric."""
    return [r for r in rows if not diverged(r) and math.isfinite(metric_value(r, metric))]


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
        values = [metric_value(r, metric) for r in usable(rows, metric)]
        first = rows[0]
        points.append({"arch": arch, "budget": float(budget), x_key: x, "params": first["params"],
                       "active_params": first.get("active_params", first["params"]), "tokens": first["tokens"],
                       "flops_per_token": first.get("flops_per_token"), "epochs": first.get("epochs"),
                       metric: float(np.mean(values)) if values else None,
                       "min": min(values, default=None), "max": max(values, default=None), "seeds": len(values),
                       "run_ids": [r["run_id"] for r in rows if not diverged(r)],
                       "diverged": [r["run_id"] for r in rows if diverged(r)]})
    return sorted(points, key=lambda p: (p["arch"], p["budget"], p["params"]))
