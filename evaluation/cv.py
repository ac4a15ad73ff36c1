"""Nested cross-validation (Jing & Wang section 2.4) and a single train/validation/test split.

Outer loop: each fold in turn is the held-out test fold. Inner loop: each remaining fold in turn
validates a model trained on the others; the test fold's probability is the mean of the inner
models' probabilities (soft voting). Stage 2 in every inner split learns from a teacher trained
on that inner split's training folds only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from preprocessing.atomic import atomic_write_csv

from .methods import Method
from .runner import Runner, Split

log = logging.getLogger("evaluation")
PREDICTION_COLUMNS = ["id", "outer_fold", "method", "probability", "label"]


def cohort_folds(data: Path) -> list[int]:
    path = Path(data) / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (--data must be a prepared cohort)")
    return sorted({entry["fold"] for entry in json.loads(path.read_text())["training"]})


def nested_cv(runner: Runner, methods: list[Method], outer_folds: list[int] | None = None) -> dict[str, pd.DataFrame]:
    """Out-of-fold predictions per method, written to ``OUT/predictions_<method>.csv``."""
    folds = cohort_folds(runner.data)
    if len(folds) < 3:
        raise ValueError(f"nested cross-validation needs at least 3 folds, the cohort has {len(folds)}")
    outer_folds = folds if outer_folds is None else outer_folds
    unknown = sorted(set(outer_folds) - set(folds))
    if unknown:
        raise ValueError(f"outer fold(s) {unknown} not in the cohort's folds {folds}")
    results = {}
    for method in methods:
        rows = []
        for test_fold in outer_folds:
            inner = [runner.predict(method, Split(val, test_fold), [test_fold]) for val in folds if val != test_fold]
            votes = pd.concat(inner).groupby(["id", "label"], as_index=False)["probability"].mean()
            votes["outer_fold"], votes["method"] = test_fold, method.name
            rows.append(votes)
            log.info("%s: outer fold %d done (%d inner models)", method.name, test_fold, len(inner))
        results[method.name] = write_predictions(pd.concat(rows), runner.out / f"predictions_{method.name}.csv")
    return results


def holdout(runner: Runner, methods: list[Method], split: Split) -> dict[str, pd.DataFrame]:
    """Predictions on ``split.test_fold`` of one model per method trained on the other folds."""
    results = {}
    for method in methods:
        frame = runner.predict(method, split, [split.test_fold])
        frame["outer_fold"], frame["method"] = split.test_fold, method.name
        results[method.name] = write_predictions(frame, runner.out / f"predictions_{method.name}.csv")
    return results


def write_predictions(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = frame[PREDICTION_COLUMNS].sort_values(["outer_fold", "id"]).reset_index(drop=True)
    atomic_write_csv(frame, path)
    return frame


def auroc_table(results: dict[str, pd.DataFrame], methods: list[Method], truth: Path | None = None) -> str:
    """Plain-text table of test AUROC per method, with the oracle AUROCs on the same patients."""
    lines = [f"{'method':<32}{'patients':>9}{'AUROC':>8}  description"]
    described = {m.name: m.description for m in methods}
    for name, frame in results.items():
        lines.append(f"{name:<32}{len(frame):>9}{roc_auc_score(frame.label, frame.probability):>8.3f}  {described[name]}")
    if truth is not None:
        patients = next(iter(results.values()))[["id", "label"]]
        oracle = patients.merge(pd.read_csv(truth, dtype={"id": str}), on="id", how="left")
        missing = oracle["p_t0_t1"].isna().sum()
        if missing:
            raise ValueError(f"{truth}: no oracle row for {missing} test patient(s)")
        for column, what in (("p_clinical", "clinical + subtype"), ("p_t0", "+ T0"), ("p_t0_t1", "+ T0, T1"),
                             ("p_t0_t2", "+ T0, T1, T2")):
            auc = roc_auc_score(oracle.label, oracle[column])
            lines.append(f"{'oracle ' + column:<32}{len(oracle):>9}{auc:>8.3f}  exact P(pCR | {what}) of the synthetic cohort")
    return "\n".join(lines)
