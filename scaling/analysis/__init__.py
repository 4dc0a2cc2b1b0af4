"""Analysis of isoFLOP sweeps and speedup comparisons, for the commands, the report and the notebooks:

- `results`: sweep outputs read back (local or gs://), grouped by architecture and budget, seeds averaged;
- `isoflop`: Chinchilla approach 2 (a parabola per budget, N_opt and D_opt power laws, each architecture
  against the baseline);
- `parametric`: Chinchilla approach 3 (L(N, D) = E + A / N^alpha + B / D^beta);
- `bootstrap`: the percentile intervals of both (each budget's runs resampled with replacement);
- `figures` and `tables`: their plots and plain-text tables;
- `speedup`: speedup versus steps and wall time of two runs' eval curves.

Everything a user calls is importable from here (`from scaling import analysis; analysis.fit_sweep(...)`).
Results and fits are plain dicts of floats and lists (JSON as they are; None, never NaN).
"""
from scaling.analysis.bootstrap import PERCENTILES, RESAMPLES
from scaling.analysis.figures import plot_isoflop, plot_parametric, plot_power_law
from scaling.analysis.isoflop import (D_OPT_FROM, POWER_LAW, budget_fits, compare_to_baseline, fit_isoflop,
                                      fit_power_law, fit_sweep)
from scaling.analysis.parametric import (HUBER_DELTA, PARAMETRIC_KEYS, fit_parametric, fit_parametric_sweep,
                                         parametric_loss)
from scaling.analysis.results import (DIVERGED, LOSS_KEY, SPREAD, aggregate_seeds, budget_key, diverged, eval_curve,
                                      load_curves, load_metrics, load_results, mean_eval_curve)
from scaling.analysis.speedup import (format_speedup_headlines, format_speedup_report, plot_speedup,
                                      plot_speedup_curves, plot_speedup_report, side_label, smooth_curve,
                                      speedup_curve, speedup_from_runs, summarize_speedup)
from scaling.analysis.tables import format_parametric, format_table

__all__ = ["DIVERGED", "D_OPT_FROM", "HUBER_DELTA", "LOSS_KEY", "PARAMETRIC_KEYS", "PERCENTILES", "POWER_LAW",
           "RESAMPLES", "SPREAD", "aggregate_seeds", "budget_fits", "budget_key", "compare_to_baseline", "diverged",
           "eval_curve", "fit_isoflop", "fit_parametric", "fit_parametric_sweep", "fit_power_law", "fit_sweep",
           "format_parametric", "format_speedup_headlines", "format_speedup_report", "format_table", "load_curves",
           "load_metrics", "load_results", "mean_eval_curve", "parametric_loss", "plot_isoflop", "plot_parametric",
           "plot_power_law", "plot_speedup", "plot_speedup_curves", "plot_speedup_report", "side_label",
           "smooth_curve", "speedup_curve", "speedup_from_runs", "summarize_speedup"]
