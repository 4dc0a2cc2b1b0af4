"""Plain-text tables of isoFLOP fits, power laws and parametric laws, with their bootstrap intervals."""
from scaling.analysis.isoflop import POWER_LAW
from scaling.analysis.parametric import PARAMETRIC_KEYS
from scaling.analysis.results import LOSS_KEY, SPREAD, aggregate_seeds, by_arch


def format_ci(ci, fmt: str) -> str:
    """' [lo, hi]' in `fmt`, or nothing without an interval."""
    return "" if ci is None else f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


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
    tokens = "" if fit.get("d_opt") is None else f" d_opt={fit['d_opt']:.3g}{format_ci(fit.get('d_opt_ci'), '.3g')}"
    boot = fit.get("bootstrap")
    note = f"  ({_format_bootstrap(boot, str(boot['with_minimum']) + ' with a minimum')})" if boot else ""
    if boot and boot["resamples"] and fit["runs"] == 3:
        note = "  (no intervals: 3 runs at 3 sizes, which the parabola fits exactly)"
    return (f"optimum: n_opt={fit['n_opt']:.3g}{unit}{format_ci(fit.get('n_opt_ci'), '.3g')}{tokens} "
            f"loss_min={fit['loss_min']:.4f}{format_ci(fit.get('loss_min_ci'), '.4f')}{where}{note}")


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
    return (f"{name} = {law['coefficient']:.3g} C^{law['exponent']:.3f}{format_ci(law['exponent_ci'], '.3f')}"
            f"  (coefficient{format_ci(law['coefficient_ci'], '.3g')}; {law['resamples_used']} resamples used)")


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
    for arch, groups in by_arch(results).items():
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
        fields = "  ".join(f"{key}={law[key]:.4g}{format_ci(ci[key], '.4g')}" for key in PARAMETRIC_KEYS[:5])
        optimal = "  ".join(f"{name} ~ C^{law[f'{key}_law']['exponent']:.3f}{format_ci(ci[f'{key}_exponent'], '.3f')}"
                            for name, key in (("N_opt", "n_opt"), ("D_opt", "d_opt")) if law[f"{key}_law"])
        optimal = f"{optimal} ({law['flops']})" if optimal else "no compute-optimal law (an exponent is 0)"
        bounds = f"\n  at a bound, not pinned by the data: {', '.join(law['at_bounds'])}" if law["at_bounds"] else ""
        boot = _format_bootstrap(law["bootstrap"], f"{law['bootstrap']['used']} used")
        blocks.append(f"{arch}  L(N, D) = E + A/N^alpha + B/D^beta, Huber delta {law['huber_delta']:g} on log L, "
                      f"{law['points']} points ({boot})"
                      f"\n  {fields}\n  {optimal}{bounds}")
    return "\n\n".join(blocks)
