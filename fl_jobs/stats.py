"""Age of a site's training patients for NVFlare's federated statistics (run before training).

The bundles z-score age with the mean and standard deviation of their training patients. A
federated job first pools them over every site's training patients with NVFlare's
``FedStatsRecipe`` (``fl_jobs.job.age_statistics``): each site's ``AgeStatistics`` reports only
aggregates of its own patients (count and sum, from which NVFlare takes the means; standard
deviation; squared deviations from the global mean), after NVFlare's minimum-count guard; no age
leaves the site. A network that sees only some patients (the fusion bundle's mammography model:
those with mammograms) pools the ages of those patients only (``patients_with``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import DataType, Feature, Statistics

DATASET, FEATURE = "train", "age"


class AgeStatistics(Statistics):
    """Age of this site's training patients: the folds of ``sites_dir/<site>/datalist.json`` other
    than the validation and central test folds, as the bundles' ``train_folds``; with
    ``patients_with``, only the patients whose entry has that key (e.g. ``mammograms``)."""

    def __init__(self, sites_dir: str, val_fold: int, central_fold: int, patients_with: str | None = None):
        super().__init__()
        # kept under their parameters' names: NVFlare's job API writes the component's config from them
        self.sites_dir, self.val_fold, self.central_fold = sites_dir, val_fold, central_fold
        self.patients_with = patients_with
        self.ages = np.empty(0)

    def initialize(self, fl_ctx: FLContext) -> None:
        # each site finds its own datalist by its name
        path = Path(self.sites_dir) / fl_ctx.get_identity_name() / "datalist.json"
        entries = json.loads(path.read_text())["training"]
        self.ages = np.array([float(e["clinical"]["age"]) for e in entries
                              if e["fold"] not in (self.val_fold, self.central_fold)
                              and (self.patients_with is None or e.get(self.patients_with))])

    def features(self) -> dict[str, list[Feature]]:
        return {DATASET: [Feature(FEATURE, DataType.FLOAT)]}

    def count(self, dataset_name: str, feature_name: str) -> int:
        return len(self.ages)

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return float(self.ages.sum())

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return float(self.ages.std(ddof=1))

    def variance_with_mean(self, dataset_name: str, feature_name: str, global_mean: float,
                           global_count: float) -> float:
        # NVFlare's contract: this site's share of the pooled sample variance, sum((x - m)^2) / (N - 1)
        return float(((self.ages - global_mean) ** 2).sum() / (global_count - 1))
