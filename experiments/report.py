"""Results tables: python -m experiments.report WORKDIR [WORKDIR ...] [--out FILE.md] [--resamples 1000].

Each WORKDIR (local or gs://) is an isoFLOP sweep (it holds results.jsonl), a speedup comparison
(curves.json) or a distillation (distillation.json). Writes markdown (to stdout, or --out): per sweep
its setup, the isoFLOP optima per arch and budget and the power laws N_opt = a C^alpha,
D_opt = b C^beta with bootstrap intervals, the parametric fit (approach 3) and the runs; per speedup
comparison both sides' LR sweeps, the speedup headlines against steps and wall time and the step-time
ratio; per distillation the three losses and the fraction of the gain kept. Every number is read from
the workdir's files (scaling/report.py). Bad input is one line naming the argument, exit status 2, and
nothing is written.
"""
import argparse
import sys

from etils import epath

from scaling import analysis, report
from scaling.config import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line 'error: ...' and exit status 2 (no usage block)."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv) -> argparse.Namespace:
    parser = _Parser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="a sweep, speedup or distillation workdir")
    parser.add_argument("--out", help="write the markdown to this file instead of stdout")
    parser.add_argument("--resamples", type=int, default=analysis.RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--metric", default=analysis.LOSS_KEY,
                        choices=(analysis.LOSS_KEY, "final_eval_causal_loss", "final_eval_bpb"),
                        help="the results field fitted")
    args = parser.parse_args(argv)
    if args.resamples < 0:
        parser.error(f"--resamples: must be >= 0 (0: no intervals), got {args.resamples}")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    try:
        text = report.build_report(args.workdirs, args.resamples, args.seed, args.metric)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.out:
        epath.Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
