"""Nested cross-validation (Jing & Wang section 2.4) and a single train/validation/test split.

Outer loop: each fold in turn is the held-out test fold. Inner loop: each remaining fold in turn
validates a model trained on the others; the test fold's probability is the mean of the inner
models' probabilities (soft voting). Stage 2 in every inner split learns from a teacher trained
on that inner split's training folds only.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from preprocessing.atomic import atomic_write_csv

from .methods import MRP, TEACHER, Method, model_key
from .runner import Runner, Split

log = logging.getLogger("evaluation")
PREDICTION_COLUMNS = ["id", "outer_fold", "method", "probability", "label"]


@dataclass
class Predictions:
    """method -> reported (test) predictions, and method -> inner-model predictions: each inner
    model's probabilities for its own validation fold and for the test fold (``fold``: the
    patient's fold, ``val_fold``: the inner model's), from which the report calls each inner model
    at its own Youden threshold."""
    test: dict[str, pd.DataFrame]
    validation: dict[str, pd.DataFrame]


def cohort_folds(data: Path) -> list[int]:
    path = Path(data) / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (--data must be a prepared cohort)")
    return sorted({entry["fold"] for entry in json.loads(path.read_text())["training"]})


def inner_validation_folds(folds: list[int], test_fold: int, inner_folds: int | None = None) -> list[int]:
    """Validation folds of an outer fold's inner splits: every other fold, or only the
    ``inner_folds`` folds preceding the test fold (cyclically: test 4 -> validation 3, the demo's split)."""
    i = folds.index(test_fold)
    others = [folds[(i - k) % len(folds)] for k in range(1, len(folds))]
    return others[:inner_folds] if inner_folds else others


def _inner_frame(runner: Runner, method: Method, split: Split) -> pd.DataFrame:
    """One inner model's predictions on its test and validation folds."""
    frame = runner.predict(method, split, [split.test_fold, split.val_fold])
    return frame.assign(fold=frame["id"].map(runner.fold_of), val_fold=split.val_fold, outer_fold=split.test_fold,
                        method=method.name)


def _outer_fold(runner: Runner, methods: list[Method], test_fold: int, val_folds: list[int]) -> dict:
    results = {}
    for method in methods:
        inner = pd.concat([_inner_frame(runner, method, Split(v, test_fold)) for v in val_folds])
        tests = inner[inner.fold == test_fold]
        votes = tests.groupby(["id", "label", "outer_fold", "method"], as_index=False)["probability"].mean()
        results[method.name] = (votes, inner)
        log.info("%s: outer fold %d done (%d inner models)", method.name, test_fold, len(val_folds))
    return results


def plan_trainings(runner: Runner, methods: list[Method], splits: list[Split]) -> None:
    """Tell the runner's progress how many trainings (not yet done) lie ahead; a model of other
    settings in the output folder stops the run here, before any training."""
    models = set().union(*(m.trainings for m in methods))
    ahead = {bundle: 0 for bundle, *_ in models}
    for bundle, train, teacher, network in models:
        ahead[bundle] += sum(not runner.is_trained(bundle, train, split, teacher, network) for split in splits)
    for bundle, count in ahead.items():
        runner.progress.plan(count, runner.bundle_epochs(bundle))
    total, epochs = sum(ahead.values()), sorted({runner.bundle_epochs(bundle) for bundle in ahead})
    log.info("%d model(s) to train (%d split(s)), %s epochs each", total, len(splits),
             " or ".join(map(str, epochs or [runner.bundle_epochs(TEACHER)])))


def independent_groups(methods: list[Method]) -> list[list[Method]]:
    """Methods grouped by the first model they need (the teacher for stage 2; every MRP method one
    group, as the ensembles share the imr and img models), largest group first: models of different
    groups never depend on each other, so groups can train at once."""
    groups: dict[str, list[Method]] = {}
    for method in methods:
        if method.bundle == MRP:
            root = MRP
        else:
            root = model_key(TEACHER, method.teacher) if method.teacher is not None else method.model_key
        groups.setdefault(root, []).append(method)
    return sorted(groups.values(), key=len, reverse=True)


def nested_cv(runner: Runner, methods: list[Method], outer_folds: list[int] | None = None,
              inner_folds: int | None = None, jobs: int = 1) -> Predictions:
    """Out-of-fold predictions per method, written to ``OUT/predictions_<method>.csv`` (and the
    inner models' predictions to ``OUT/validation_<method>.csv``). With ``jobs`` > 1, independent
    (outer fold, method group) tasks run that many at once."""
    folds = cohort_folds(runner.data)
    if len(folds) < 3:
        raise ValueError(f"nested cross-validation needs at least 3 folds, the cohort has {len(folds)}")
    outer_folds = folds if outer_folds is None else outer_folds
    unknown = sorted(set(outer_folds) - set(folds))
    if unknown:
        raise ValueError(f"outer fold(s) {unknown} not in the cohort's folds {folds}")
    tasks = [(group, fold) for group in independent_groups(methods) for fold in outer_folds]
    plan_trainings(runner, methods, [Split(v, f) for f in outer_folds for v in inner_validation_folds(folds, f, inner_folds)])
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on bundle child processes
        done = list(pool.map(lambda t: _outer_fold(runner, t[0], t[1], inner_validation_folds(folds, t[1], inner_folds)),
                             tasks))
    results = {m.name: [] for m in methods}
    for (group, fold), result in sorted(zip(tasks, done), key=lambda item: item[0][1]):
        for name, frames in result.items():
            results[name].append(frames)
    return write_all(runner.out, results)


def holdout(runner: Runner, methods: list[Method], split: Split) -> Predictions:
    """Predictions on ``split.test_fold`` of one model per method trained on the other folds."""
    plan_trainings(runner, methods, [split])
    return write_all(runner.out, {m.name: [_outer_fold(runner, [m], split.test_fold, [split.val_fold])[m.name]]
                                  for m in methods})


def write_all(out: Path, results: dict[str, list[tuple[pd.DataFrame, pd.DataFrame]]]) -> Predictions:
    predictions = Predictions({}, {})
    for name, parts in results.items():
        tests, vals = zip(*parts)
        predictions.test[name] = write_predictions(pd.concat(tests), out / f"predictions_{name}.csv")
        predictions.validation[name] = write_predictions(pd.concat(vals), out / f"validation_{name}.csv",
                                                         ["fold", "val_fold"])
    return predictions


def write_predictions(frame: pd.DataFrame, path: Path, extra: list[str] = ()) -> pd.DataFrame:
    frame = frame[PREDICTION_COLUMNS + list(extra)].sort_values(["outer_fold", "id"]).reset_index(drop=True)
    atomic_write_csv(frame, path)
    return frame
