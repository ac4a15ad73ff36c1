"""Age of a site's training patients for NVFlare's federated statistics (run before training).

The bundles z-score age with the mean and standard deviation of their training patients. A
federated job first pools them over every site's training patients with NVFlare's
``FedStatsRecipe`` (``fl_jobs.job.age_statistics``): each site's ``AgeStatistics`` reports only
aggregates of its own patients (count and sum, from which NVFlare takes the means; standard
deviation; squared deviations from the global mean), after NVFlare's minimum-count guard; no age
leaves the site. A network that sees only some patients (the fusion bundle's mammography model:
those with mammograms) pools the ages of those patients only (``patients_with``).

Stage 2 of the two-stage method divides its teacher targets by their root mean square over the
training patients: given the sites' exported teacher representations (``teacher_features``), the
same job pools each training patient's mean square of its representation (``teacher_ms``), whose
pooled mean is the square of that scale, as centralized training computes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import DataType, Feature, Statistics

from fl_jobs.sites import teacher_features_file

DATASET, FEATURE, TEACHER_MS = "train", "age", "teacher_ms"


class AgeStatistics(Statistics):
    """Age of this site's training patients: the folds of ``sites_dir/<site>/datalist.json`` other
    than the validation and central test folds, as the bundles' ``train_folds``; with
    ``patients_with``, only the patients whose entry has that key (e.g. ``mammograms``); with
    ``teacher_features`` (a folder of ``<site>/teacher_features.csv``), also their teacher
    representations' mean squares."""

    def __init__(self, sites_dir: str, val_fold: int, central_fold: int, patients_with: str | None = None,
                 teacher_features: str | None = None):
        super().__init__()
        # kept under their parameters' names: NVFlare's job API writes the component's config from them
        self.sites_dir, self.val_fold, self.central_fold = sites_dir, val_fold, central_fold
        self.patients_with, self.teacher_features = patients_with, teacher_features
        self.values: dict[str, np.ndarray] = {}

    def initialize(self, fl_ctx: FLContext) -> None:
        # each site finds its own datalist (and representations) by its name
        site = fl_ctx.get_identity_name()
        path = Path(self.sites_dir) / site / "datalist.json"
        entries = [e for e in json.loads(path.read_text())["training"]
                   if e["fold"] not in (self.val_fold, self.central_fold)
                   and (self.patients_with is None or e.get(self.patients_with))]
        self.values = {FEATURE: np.array([float(e["clinical"]["age"]) for e in entries])}
        if self.teacher_features:
            path = teacher_features_file(self.teacher_features, site)
            table = pd.read_csv(path, dtype={"id": str}).set_index("id")
            missing = [e["id"] for e in entries if e["id"] not in table.index]
            if missing:
                raise ValueError(f"patient {missing[0]}: no teacher representation in {path}")
            self.values[TEACHER_MS] = (table.loc[[e["id"] for e in entries]].to_numpy(float) ** 2).mean(axis=1)

    def features(self) -> dict[str, list[Feature]]:
        names = [FEATURE] + ([TEACHER_MS] if self.teacher_features else [])
        return {DATASET: [Feature(name, DataType.FLOAT) for name in names]}

    def count(self, dataset_name: str, feature_name: str) -> int:
        return len(self.values[feature_name])

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return float(self.values[feature_name].sum())

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return float(self.values[feature_name].std(ddof=1))

    def variance_with_mean(self, dataset_name: str, feature_name: str, global_mean: float,
                           global_count: float) -> float:
        # NVFlare's contract: this site's share of the pooled sample variance, sum((x - m)^2) / (N - 1)
        return float(((self.values[feature_name] - global_mean) ** 2).sum() / (global_count - 1))
