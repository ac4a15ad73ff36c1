"""``python -m evaluation {cv,holdout,benchmark,report,bench,ceiling,contributions}``: train and test
the bundles' methods on a prepared cohort, and report their statistics."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cv import holdout, nested_cv
from .methods import METHODS, MRP, parse_methods
from .runner import PROFILES, BundleRunError, Runner, Split, threads_per_job


CONTRIBUTION_STEPS = 50  # integrated-gradients steps (Gauss-Legendre points)
# the benchmark attributes its three main networks (two inner models x every patient) with fewer
# steps, so that the attributions take minutes, not an hour; the log prints the completeness gap
BENCHMARK_CONTRIBUTION_STEPS = 20


def _folds(text: str) -> list[int]:
    return [int(f) for f in text.split(",") if f.strip()]


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", type=Path, default=None, help="truth.csv of a synthetic cohort: oracle rows")
    parser.add_argument("--reference", default=None, help="method compared with every other by DeLong's test "
                                                          "(default: dualtask if present, else the first)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the CIs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path, required=True, help="prepared cohort (datalist.json)")
    common.add_argument("--out", type=Path, required=True, help="output folder")
    common.add_argument("--method", default=None, help=f"comma-separated, from: {', '.join(METHODS)}")
    common.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="cpu: narrow widths, few epochs; gpu: the paper's settings")
    common.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    common.add_argument("--seed", type=int, default=0)
    _report_options(common)
    cv = sub.add_parser("cv", parents=[common], help="nested cross-validation (5 outer x 4 inner on a 5-fold cohort)")
    cv.add_argument("--outer-folds", type=_folds, default=None, help="run only these outer folds, e.g. 0,1")
    cv.add_argument("--inner-folds", type=int, default=None, help="inner splits per outer fold (default: all)")
    cv.add_argument("--jobs", type=int, default=1, help="independent training tasks at once (each with cores/jobs threads)")
    split = sub.add_parser("holdout", parents=[common], help="one train/validation/test split")
    split.add_argument("--val-fold", type=int, default=3)
    split.add_argument("--test-fold", type=int, default=4)
    benchmark = sub.add_parser("benchmark", parents=[common],
                               help="the paper's comparison: every method by nested cross-validation, then the report")
    benchmark.add_argument("--jobs", type=int, default=None, help="independent training tasks at once (profile default)")
    report = sub.add_parser("report", help="statistics, figures, report.md and report.html from prediction CSVs")
    report.add_argument("--predictions", type=Path, nargs="+", required=True, help="CSV(s): id, outer_fold, method, "
                                                                                   "probability, label")
    report.add_argument("--validation", type=Path, nargs="*", default=None,
                        help="inner-model predictions (validation_<method>.csv of cv/holdout: + fold, val_fold; each "
                             "inner model on its validation and test folds) for the Youden operating point")
    report.add_argument("--data", type=Path, default=None, help="prepared cohort: subgroups and odds ratios")
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--about", type=Path, default=None, help="JSON of run details for the header "
                                                                 "(e.g. a benchmark's benchmark.json)")
    _report_options(report)
    bench = sub.add_parser("bench", help="bundle trainer vs hand-written loop; inference latency; peak memory")
    bench.add_argument("--data", type=Path, required=True, help="prepared cohort (datalist.json)")
    bench.add_argument("--bundle", choices=("pcr_teacher", "pcr_dualtask"), default="pcr_teacher")
    bench.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    bench.add_argument("--epochs", type=int, default=2, help="epochs per timed round")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--teacher-features", type=Path, default=None, help="pcr_dualtask: teacher representations")
    bench.add_argument("--val-fold", type=int, default=3)
    bench.add_argument("--test-fold", type=int, default=4, help="its patients are timed for inference latency")
    ceiling = sub.add_parser("ceiling", help="synthetic cohorts: regressions on the measured FTV and on the generator's "
                                             "exact image quantities beside the oracles (what a fitted model can reach)")
    ceiling.add_argument("--data", type=Path, required=True, help="prepared cohort (datalist.json)")
    ceiling.add_argument("--truth", type=Path, required=True, help="truth.csv of the synthetic cohort")
    ceiling.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the CIs")
    contributions = sub.add_parser("contributions", help="modality and rhpc-variable contributions of the trained MRP "
                                                         "networks by integrated gradients, on their test patients")
    contributions.add_argument("--data", type=Path, required=True, help="prepared cohort the models were trained on")
    contributions.add_argument("--out", type=Path, required=True, help="output folder of cv, holdout or benchmark")
    contributions.add_argument("--steps", type=int, default=CONTRIBUTION_STEPS, help="integration steps")
    contributions.add_argument("--visits", default=None, help="MRI visits a test patient contributes, e.g. T0 "
                                                             "(default: every visit of the model)")
    return parser


def _report(args, test, validation, about=None) -> None:
    from .report import build_report, write_report

    out = args.out / "report" if args.command != "report" else args.out
    report = build_report(test, out, validation, args.truth, args.data, args.reference, about, args.resamples)
    md, page = write_report(report, out)
    print(report.summary)
    print(f"report: {md}  {page}")
    print(f"figures: {out / 'figures'}/*.png|svg")


def _contributions(data: Path, out: Path, steps: int = CONTRIBUTION_STEPS, visits: str | None = None,
                   ablations: bool = True) -> None:
    from .contributions import write_contributions

    table = write_contributions(data.resolve(), out.resolve(), steps, visits and visits.split(","), ablations=ablations)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"contributions: {out / 'report' / 'contributions.csv'}  {out / 'report' / 'figures'}/contributions.png|svg")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from .bench import bench as run_bench

        print(run_bench(args.data.resolve(), args.bundle, args.profile, args.epochs, args.rounds, args.teacher_features,
                        args.val_fold, args.test_fold))
        return 0
    if args.command == "ceiling":
        from .ceiling import ceiling_table

        try:
            table = ceiling_table(args.data, args.truth, args.resamples)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if args.command == "contributions":
            _contributions(args.data, args.out, args.steps, args.visits)
            return 0
        if args.command == "report":
            from .report import read_predictions

            validation = read_predictions(args.validation) if args.validation else None
            about = json.loads(args.about.read_text()) if args.about else None
            _report(args, read_predictions(args.predictions), validation, about)
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        if args.command == "benchmark":
            from .benchmark import run_benchmark

            predictions, about = run_benchmark(args.data.resolve(), args.out.resolve(), args.profile, args.epochs,
                                               args.seed, args.method, args.jobs)
            _report(args, predictions.test, predictions.validation, about)
            if args.method and any(m.bundle == MRP for m in parse_methods(args.method)):  # default: two-stage only
                _contributions(args.data, args.out, BENCHMARK_CONTRIBUTION_STEPS, ablations=False)
            return 0
        default = "dualtask,conv1,conv2,teacher,lr_clinical,lr_ftv,lr_ftv_t2" if args.command == "holdout" else "dualtask"
        methods = parse_methods(args.method or default)
        if args.command == "cv":
            runner = Runner(args.data.resolve(), args.out.resolve(), args.profile, args.epochs, args.seed,
                            threads=threads_per_job(args.jobs))
            predictions = nested_cv(runner, methods, args.outer_folds, args.inner_folds, args.jobs)
        else:
            runner = Runner(args.data.resolve(), args.out.resolve(), args.profile, args.epochs, args.seed)
            predictions = holdout(runner, methods, Split(args.val_fold, args.test_fold))
        print(f"predictions: {args.out}/predictions_<method>.csv, validation_<method>.csv")
        _report(args, predictions.test, predictions.validation)
    except (BundleRunError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
