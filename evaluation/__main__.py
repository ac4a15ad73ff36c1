"""``python -m evaluation {cv,holdout}``: train and test the bundles' methods on a prepared cohort."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .cv import auroc_table, holdout, nested_cv
from .methods import METHODS, parse_methods
from .runner import PROFILES, BundleRunError, Runner, Split


def _folds(text: str) -> list[int]:
    return [int(f) for f in text.split(",") if f.strip()]


def main(argv: list[str] | None = None) -> int:
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
    common.add_argument("--truth", type=Path, default=None, help="truth.csv of a synthetic cohort: print oracle AUROCs")
    cv = sub.add_parser("cv", parents=[common], help="nested cross-validation (5 outer x 4 inner on a 5-fold cohort)")
    cv.add_argument("--outer-folds", type=_folds, default=None, help="run only these outer folds, e.g. 0,1")
    split = sub.add_parser("holdout", parents=[common], help="one train/validation/test split")
    split.add_argument("--val-fold", type=int, default=3)
    split.add_argument("--test-fold", type=int, default=4)
    bench = sub.add_parser("bench", help="bundle trainer vs hand-written loop; inference latency; peak memory")
    bench.add_argument("--data", type=Path, required=True, help="prepared cohort (datalist.json)")
    bench.add_argument("--bundle", choices=("pcr_teacher", "pcr_dualtask"), default="pcr_teacher")
    bench.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    bench.add_argument("--epochs", type=int, default=2, help="epochs per timed round")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--teacher-features", type=Path, default=None, help="pcr_dualtask: teacher representations")
    bench.add_argument("--val-fold", type=int, default=3)
    bench.add_argument("--test-fold", type=int, default=4, help="its patients are timed for inference latency")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import bench as run_bench

        print(run_bench(args.data.resolve(), args.bundle, args.profile, args.epochs, args.rounds, args.teacher_features,
                        args.val_fold, args.test_fold))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    default = "dualtask,conv1,conv2,teacher" if args.command == "holdout" else "dualtask"
    try:
        methods = parse_methods(args.method or default)
        args.out.mkdir(parents=True, exist_ok=True)
        runner = Runner(args.data.resolve(), args.out.resolve(), args.profile, args.epochs, args.seed)
        if args.command == "cv":
            results = nested_cv(runner, methods, args.outer_folds)
        else:
            results = holdout(runner, methods, Split(args.val_fold, args.test_fold))
        table = auroc_table(results, methods, args.truth)
    except (BundleRunError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table)
    (args.out / "auroc.txt").write_text(table + "\n")
    print(f"predictions: {args.out}/predictions_<method>.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
