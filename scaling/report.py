"""Markdown results tables of sweep and speedup workdirs (experiments/report.py).

Every number is read from the workdir's files: a sweep's plan.json (optional: hardware, data,
tokenizer, seq_len, budgets/budget, seeds, lr_search) and results.jsonl, refitted here by
scaling.analysis (approach 2 with bootstrap intervals and power laws; approach 3 where an arch has
several budgets) against the fits.json x axis; a speedup comparison's curves.json and its best
runs' config.json (hardware, tokenizer); a distillation's distillation.json, config.json and
summary.json.
"""
from __future__ import annotations

import json

from etils import epath

from scaling import analysis
from scaling.config import UsageError
from scaling.models.registry import ARCHITECTURES

NONE = "—"
BASELINE = "gpt"


KINDS = {"results.jsonl": "sweep", "curves.json": "speedup", "distillation.json": "distillation"}


def workdir_kind(workdir) -> str:
    """"sweep" (it holds results.jsonl), "speedup" (curves.json) or "distillation" (distillation.json);
    UsageError naming it otherwise."""
    path = epath.Path(workdir)
    for name, kind in KINDS.items():
        if (path / name).exists():
            return kind
    raise UsageError("WORKDIR", f"{workdir} is neither a sweep, a speedup nor a distillation workdir "
                                f"(none of {', '.join(KINDS)})")


def _read_json(path) -> dict:
    """A JSON file's content, {} when it does not exist."""
    path = epath.Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def _num(value, fmt: str = ".3g") -> str:
    """A number in `fmt`, NONE for None."""
    return NONE if value is None else f"{value:{fmt}}"


def _times(value) -> str:
    """A speedup as '1.52x', NONE for None (undefined)."""
    return NONE if value is None else f"{value:.2f}x"


def _with_ci(value, ci, fmt: str = ".3g") -> str:
    """'value [lo, hi]' (the interval left out when there is none)."""
    return _num(value, fmt) + ("" if value is None or ci is None else f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]")


def _listing(values, fmt: str = "g") -> str:
    """Comma-separated values, NONE for none."""
    return ", ".join(f"{v:{fmt}}" if isinstance(v, (int, float)) else str(v) for v in values) or NONE


def _lr_choice(plan: dict, results) -> str:
    """How learning rates were chosen: plan.json's lr_search (grid and each arch's chosen rate), else one
    fixed rate shared by every run, else the sweep's default, the Kaplan rule (Kaplan et al. 2020, eq. D.1)."""
    search = plan.get("lr_search")
    if search:
        chosen = ", ".join(f"{arch} {entry['chosen_lr']:.3g}" if entry.get("chosen_lr") else f"{arch} pending"
                           for arch, entry in search["calibration"].items())
        return (f"searched per arch: {search['points']} rates x{search['grid_multipliers'][0]:.2g}.."
                f"x{search['grid_multipliers'][-1]:.2g} the Kaplan rate at {search['calibration_budget']:.2g} FLOPs, "
                f"best carried to every size by the Kaplan ratio ({chosen})")
    rates = {r["learning_rate"] for r in results if r.get("learning_rate") is not None}
    rates |= {run["train"]["learning_rate"] for run in plan.get("runs", []) if "learning_rate" in run.get("train", {})}
    if len(rates) == 1 and len(results) > 1:
        return f"fixed {rates.pop():g}"
    return "Kaplan rule (0.003239 - 0.0001395 ln N)"


def _fingerprint(results) -> dict:
    """The first run's data fingerprint (a dict; {} when unrecorded or not a dict)."""
    fingerprint = results[0].get("data_fingerprint") if results else None
    return fingerprint if isinstance(fingerprint, dict) else {}


def _run_configs(workdir, run_names) -> list[dict]:
    """The config.json of each named run under <workdir>/runs ({} where there is none)."""
    return [_read_json(epath.Path(workdir) / "runs" / name / "config.json") for name in run_names]


def _hardware(configs) -> str | None:
    """The hardware the configs name (each distinct one, in order), None if none does."""
    return " / ".join(dict.fromkeys(c["hardware"] for c in configs if c.get("hardware"))) or None


def _tokenizer(fingerprint: dict) -> str | None:
    """The tokenizer of a data fingerprint in words: its spec and vocabulary."""
    tokenizer = fingerprint.get("tokenizer")
    if isinstance(tokenizer, dict):
        return f"{tokenizer.get('spec', '?')} (vocabulary {tokenizer.get('vocab_size', '?')})"
    return tokenizer


def _sweep_setup(plan: dict, results, x_key: str, metric: str, resamples: int, seed: int,
                 hardware: str | None = None) -> str:
    """The setup line of a sweep: hardware and tokenizer when recorded, data, seq_len, budgets, seeds,
    LR choice, what is fitted and how the intervals are made."""
    hardware = plan.get("hardware") or hardware
    tokenizer = plan.get("tokenizer") or _tokenizer(_fingerprint(results))
    budgets = plan.get("budgets") or ([plan["budget"]] if "budget" in plan else
                                      sorted({float(r["budget"]) for r in results}))
    seeds = plan.get("seeds") or sorted({r["seed"] for r in results if r.get("seed") is not None})
    seq_len = plan.get("seq_len") or next((r["seq_len"] for r in results if r.get("seq_len")), None)
    parts = ([f"hardware {hardware}"] if hardware else []) + [
        f"data {plan.get('data') or _fingerprint(results).get('name') or 'not recorded'}"] + (
        [f"tokenizer {tokenizer}"] if tokenizer else []) + [
        f"seq_len {_num(seq_len, 'd')}", f"budgets {_listing(budgets, '.3g')}",
        f"seeds {_listing(seeds) if seeds else 'one per size (unrecorded)'}", f"LR {_lr_choice(plan, results)}"]
    return ("Setup: " + "; ".join(parts) + f".  \nFits: {metric} vs {x_key}, mean over seeds per size (spread: "
            f"{analysis.SPREAD}); diverged runs left out; intervals: {analysis.PERCENTILES[0]}.."
            f"{analysis.PERCENTILES[1]} percentiles of {resamples} bootstrap resamples of each budget's runs "
            f"(seed {seed}).")


def _optima_table(fits) -> list[str]:
    """Approach 2's optimum per arch and budget, with intervals and the diverged runs left out."""
    lines = ["| arch | budget C | sizes | runs | N_opt | D_opt | L_min | diverged (left out) |",
             "|---|---|---|---|---|---|---|---|"]
    for arch, arch_fits in fits.items():
        for budget, fit in analysis.budget_fits(arch_fits).items():
            where = "" if not fit["has_minimum"] or fit["x_range"][0] <= fit["n_opt"] <= fit["x_range"][1] else \
                " (extrapolated)"
            n_opt = _with_ci(fit["n_opt"], fit["n_opt_ci"]) + where if fit["has_minimum"] else "no minimum (concave)"
            lines.append(f"| {arch} | {float(budget):.3g} | {fit['points']} | {fit['runs']} | {n_opt} | "
                         f"{_with_ci(fit['d_opt'], fit['d_opt_ci'])} | "
                         f"{_with_ci(fit['loss_min'], fit['loss_min_ci'], '.4f')} | "
                         f"{', '.join(fit['diverged']) or NONE} |")
    return lines


def _laws_table(fits) -> list[str]:
    """N_opt = a C^alpha and D_opt = b C^beta per arch, with intervals."""
    rows = [(arch, arch_fits[analysis.POWER_LAW]) for arch, arch_fits in fits.items()
            if analysis.POWER_LAW in arch_fits]
    if not rows:
        return ["No power law: no arch has 2 or more budgets whose parabola has a minimum."]
    lines = ["| arch | budgets | alpha (N_opt) | a | beta (D_opt) | b | resamples used |",
             "|---|---|---|---|---|---|---|"]
    for arch, block in rows:
        n_law, d_law = block["n_opt_law"], block["d_opt_law"] or {}
        lines.append(f"| {arch} | {_listing(block['budgets'], '.3g')} | "
                     f"{_with_ci(n_law['exponent'], n_law['exponent_ci'], '.3f')} | "
                     f"{_with_ci(n_law['coefficient'], n_law['coefficient_ci'])} | "
                     f"{_with_ci(d_law.get('exponent'), d_law.get('exponent_ci'), '.3f')} | "
                     f"{_with_ci(d_law.get('coefficient'), d_law.get('coefficient_ci'))} | {n_law['resamples_used']} |")
    return lines + ["", f"D_opt = {analysis.D_OPT_FROM}."]


def _parametric_table(laws) -> list[str]:
    """Approach 3's fitted law per arch and the compute-optimal exponents it implies, with intervals."""
    if not laws:
        return ["No parametric fit: it needs an arch with 2 or more budgets."]
    lines = ["| arch | points | E | A | B | alpha | beta | N_opt exponent | D_opt exponent | resamples used | "
             "at a bound (not pinned) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, law in laws.items():
        ci = law["ci"]
        exponents = [_with_ci(law[f"{k}_law"]["exponent"] if law[f"{k}_law"] else None, ci[f"{k}_exponent"], ".3f")
                     for k in ("n_opt", "d_opt")]
        fields = [_with_ci(law[k], ci[k], ".3f" if k in ("alpha", "beta") else ".4g")
                  for k in ("E", "A", "B", "alpha", "beta")]
        lines.append(f"| {arch} | {law['points']} | {' | '.join(fields + exponents)} | {law['bootstrap']['used']} | "
                     f"{', '.join(law['at_bounds']) or NONE} |")
    return lines + ["", f"Huber delta {next(iter(laws.values()))['huber_delta']:g} on log L, L-BFGS-B from the best "
                        f"points of the Hoffmann et al. grid; compute-optimal laws under C = 6 N D."]


def _baseline_table(comparison, baseline: str) -> list[str]:
    """Each arch against the baseline per budget (analysis.compare_to_baseline), with intervals."""
    if not comparison:
        return [f"No comparison: it needs {baseline} and another arch with a minimum at the same budget."]
    lines = [f"| arch | budget C | L_min - L_min({baseline}) | N_opt / N_opt({baseline}) | "
             f"{baseline} compute to reach its L_min, / C | the paper's claim |", "|---|---|---|---|---|---|"]
    for arch, budgets in comparison.items():
        claim = ARCHITECTURES[arch].claim if arch in ARCHITECTURES else ""
        for budget, entry in budgets.items():
            lines.append(f"| {arch} | {float(budget):.3g} | {_with_ci(entry['loss_delta'], entry['loss_delta_ci'], '+.4f')} | "
                         f"{_with_ci(entry['n_opt_ratio'], entry['n_opt_ratio_ci'], '.2f')} | "
                         f"{_with_ci(entry['compute_multiplier'], entry['compute_multiplier_ci'], '.2f')} | "
                         f"{claim or NONE} |")
    return lines + ["", f"Negative loss differences and multipliers above 1 favour the arch. The multiplier inverts "
                        f"{baseline}'s L_min(C) power law over the sweep's budgets (outside them it extrapolates)."]


def _runs_table(results, metric: str) -> list[str]:
    """One row per arch, budget and size: run_ids, params, tokens, epochs of the training data, seeds
    averaged, mean and spread."""
    lines = [f"| arch | budget C | run_ids | params | tokens | epochs | seeds | {metric} | spread |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in analysis.aggregate_seeds(results, "params", metric):
        ids = ", ".join(p["run_ids"] + [f"{run_id} (diverged)" for run_id in p["diverged"]])
        spread = f"{p['min']:.4f}..{p['max']:.4f}" if p["seeds"] > 1 else NONE
        lines.append(f"| {p['arch']} | {p['budget']:.3g} | {ids} | {p['params']:.3g} | {p['tokens']:.3g} | "
                     f"{_num(p['epochs'], '.2g')} | {p['seeds']} | {_num(p[metric], '.4f')} | {spread} |")
    return lines


def sweep_section(workdir, resamples: int = analysis.RESAMPLES, seed: int = 0, metric: str = analysis.LOSS_KEY,
                  baseline: str = BASELINE) -> str:
    """The markdown section of one sweep workdir: setup, approach 2 optima, the archs against the
    baseline, power laws, approach 3, runs."""
    results = analysis.load_results(workdir)
    fitted = [fit for arch_fits in _read_json(epath.Path(workdir) / "fits.json").values()
              for fit in analysis.budget_fits(arch_fits).values()]
    x_key = fitted[0]["x_key"] if fitted else "params"
    fits = analysis.fit_sweep(results, x_key, metric=metric, resamples=resamples, seed=seed)
    laws = analysis.fit_parametric_sweep(results, x_key, metric, resamples=resamples, seed=seed)
    comparison = analysis.compare_to_baseline(results, baseline, x_key, metric, resamples, seed)
    hardware = _hardware(_run_configs(workdir, [r["run_id"] for r in results]))
    return "\n".join([
        f"## Sweep `{workdir}`", "", _sweep_setup(_read_json(epath.Path(workdir) / "plan.json"), results, x_key, metric,
                                                  resamples, seed, hardware), "",
        "### isoFLOP optima (Chinchilla approach 2: parabola in log N per budget)", "", *_optima_table(fits), "",
        f"### Against {baseline} at equal compute", "", *_baseline_table(comparison, baseline), "",
        "### Power laws N_opt = a C^alpha, D_opt = b C^beta", "", *_laws_table(fits), "",
        "### Parametric fit L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3)", "",
        *_parametric_table(laws), "",
        "### Runs", "", *_runs_table(results, metric)])


def _speedup_setup(report: dict, workdir) -> str:
    """The setup line of a speedup comparison, from curves.json's "setup", the sides' LR sweeps and the
    hardware and tokenizer their best runs' config.json files record."""
    setup = report["setup"]
    configs = _run_configs(workdir, [epath.Path(report[side]["run_dir"]).name for side in ("baseline", "variant")
                                     if report[side].get("run_dir")])
    hardware = _hardware(configs)
    tokenizer = _tokenizer(configs[0].get("data_fingerprint") or {}) if configs else None
    grid = sorted({float(lr) for side in ("baseline", "variant") for lr in report[side].get("sweep", {})})
    lr = f"searched: {_listing(grid)} (best of each side)" if len(grid) > 1 else f"fixed {_listing(grid)}"
    keys = ("devices", "mesh", "data", "seq_len", "batch_size", "steps", "tokens", "eval_every", "smooth", "metric",
            "seeds")
    value = lambda v: _num(v) if isinstance(v, float) else ", ".join(map(str, v)) if isinstance(v, list) else v
    parts = ([f"hardware {hardware}"] if hardware else []) + ([f"tokenizer {tokenizer}"] if tokenizer else [])
    parts += [f"{k} {value(setup[k])}" for k in keys if k in setup]
    return "Setup: " + "; ".join(parts + [f"LR {lr}"]) + "."


def _lr_sweep_table(report: dict) -> list[str]:
    """Final eval loss per learning rate of both sides (no table when neither side swept)."""
    sweeps = [report[side].get("sweep", {}) for side in ("baseline", "variant")]
    rates = sorted({float(lr) for sweep in sweeps for lr in sweep})
    if len(rates) < 2:
        return []
    cell = lambda sweep, lr: next((f"{loss:.4f}" for key, loss in sweep.items() if float(key) == lr), "")
    base, var = (analysis.side_label(report[side]) for side in ("baseline", "variant"))
    return ["", f"| learning rate | {base} | {var} |", "|---|---|---|",
            *(f"| {lr:g} | {cell(sweeps[0], lr)} | {cell(sweeps[1], lr)} |" for lr in rates)]


def _seeds_table(report: dict) -> list[str]:
    """Each seed's final losses (the compared metric) at the chosen rates and their difference, with
    the means and the difference's standard deviation (no table for one seed)."""
    difference = report.get("difference") or {}
    if len(difference.get("seeds", [])) < 2:
        return []
    key, (base, var) = difference["metric"], (report[side] for side in ("baseline", "variant"))
    rows = [f"| {seed} | {b[key]:.4f} | {v[key]:.4f} | {d:+.4f} |"
            for seed, b, v, d in zip(difference["seeds"], base["seeds"], var["seeds"], difference["per_seed"])]
    names = " | ".join(analysis.side_label(side) for side in (base, var))
    return ["", f"| seed | {names} | difference ({key}) |", "|---|---|---|---|", *rows,
            f"| mean | {base[key]:.4f} | {var[key]:.4f} | {difference['mean']:+.4f} (sd {difference['std']:.4f}) |"]


def speedup_section(workdir) -> str:
    """The markdown section of one speedup workdir: setup, both sides, the speedup headlines against
    steps and wall time, and the step-time ratio."""
    report = analysis.load_curves(workdir)
    timing = report["per_step_time"]
    causal = {side: report[side].get("final_eval_causal_loss", report[side]["final_eval_loss"])
              for side in ("baseline", "variant")}
    differs = any(causal[side] != report[side]["final_eval_loss"] for side in causal)
    lines = [f"## Speedup `{workdir}`", "", _speedup_setup(report, workdir), "",
             "| side | arch | params | learning rate | final eval loss |" + (" causal pass (as sampled) |" * differs),
             "|---|---|---|---|---|" + "---|" * differs]
    for side in ("baseline", "variant"):
        s = report[side]
        edge = " (best at the grid's edge)" if s.get("best_at_grid_edge") else ""
        lines.append(f"| {side} | {analysis.side_label(s)} | {s['params']:,} | {s['learning_rate']:g}{edge} | "
                     f"{s['final_eval_loss']:.4f} |" + (f" {causal[side]:.4f} |" * differs))
    lines += _lr_sweep_table(report) + _seeds_table(report)
    lines += ["", "| speedup vs | last defined | at | median, 2nd half | max | defined at |",
              "|---|---|---|---|---|---|"]
    for key in ("steps", "wall"):
        s = report["summary"][key]
        lines.append(f"| {key} | {_times(s['last_defined'])} | {_num(s['last_defined_at'], '.4g')} | "
                     f"{_times(s['median_second_half'])} | {_times(s['max'])} | {s['defined_fraction']:.0%} |")
    return "\n".join(lines + [
        "", f"Step time: {timing['baseline_s'] * 1e3:.2f} ms ({analysis.side_label(report['baseline'])}) vs "
            f"{timing['variant_s'] * 1e3:.2f} ms ({analysis.side_label(report['variant'])}): ratio "
            f"{timing['variant_s'] / timing['baseline_s']:.3f} (variant / baseline), measured side by side."])


def distillation_section(workdir) -> str:
    """The markdown section of one distillation workdir (experiments/distill.py): the student, teacher
    and dense baseline's eval losses on the same held-out batches and the fraction of the gain kept."""
    path = epath.Path(workdir)
    report, config, summary = (_read_json(path / name) for name in ("distillation.json", "config.json", "summary.json"))
    hardware = _hardware([config])
    setup = ([f"hardware {hardware}"] if hardware else []) + (
        [f"student steps {summary['steps']}"] if "steps" in summary else []) + [
        f"loss {1 - report['soft_weight']:g} x labels + {report['soft_weight']:g} x teacher soft targets"]
    kept = report.get("kept")
    return "\n".join([
        f"## Distillation `{workdir}`", "", "Setup: " + "; ".join(setup) + ".", "",
        "| model | eval loss (same held-out batches) |", "|---|---|",
        *(f"| {name} | {report[f'{name}_eval_loss']:.4f} |" for name in ("student", "teacher", "baseline")), "",
        f"Fraction of the teacher's gain kept: {NONE if kept is None else f'{kept:.3g}'} "
        "((L_baseline - L_student) / (L_baseline - L_teacher))."])


def build_report(workdirs, resamples: int = analysis.RESAMPLES, seed: int = 0, metric: str = analysis.LOSS_KEY) -> str:
    """The markdown report of every workdir, in order. Every workdir is checked (`workdir_kind`) before
    any is read, so bad input fails before anything is computed."""
    kinds = [workdir_kind(workdir) for workdir in workdirs]
    section = {"sweep": lambda w: sweep_section(w, resamples, seed, metric), "speedup": speedup_section,
               "distillation": distillation_section}
    sections = [section[kind](w) for w, kind in zip(workdirs, kinds)]
    return "# Results\n\n" + "\n\n".join(sections) + "\n"
