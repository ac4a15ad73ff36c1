"""Server side of a federated job: FedAvg in a fixed order, and every global model evaluated on
the central test set.

``SiteOrderAggregator`` is NVFlare's FedAvg mean taken over a round's results in site-name order.

The central test patients are in no site's data. Each round's global model, once persisted by
NVFlare's FedAvg, is evaluated on them with the bundle's own ``evaluate.json`` (MONAI's ``MonaiAlgo`` in
evaluation-only mode); at the end, the final global model and the best one (chosen by the
clients' validation loss, never by the central test set) are evaluated too. Results go to
``<server run dir>/central_test/``: ``metrics.json`` and one predictions CSV per model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch
from monai.fl.client import MonaiAlgo
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator
from nvflare.app_common.workflows.base_fedavg import BaseFedAvg
from monai.fl.utils.constants import ExtraItems
from monai.fl.utils.exchange_object import ExchangeObject
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.apis.event_type import EventType
from nvflare.app_common.app_constant import AppConstants, DefaultCheckpointFileName
from nvflare.app_common.app_event_type import AppEventType

from evaluation.cv import PREDICTION_COLUMNS
from evaluation.metrics import auroc
from fl_jobs.bundle import find_bundle
from preprocessing.atomic import atomic_write_csv, atomic_write_json

CENTRAL_DIR = "central_test"


class SiteOrderAggregator(ModelAggregator):
    """FedAvg's weighted mean (``BaseFedAvg.aggregate_fn``: weights by each site's steps) over a
    round's results in site-name order. FedAvg's built-in aggregation adds each result as it
    arrives, so the float rounding of the sum, and after a few rounds the trained model, depended on
    which site finished first: with the order fixed, a job run twice gives the same models."""

    def __init__(self):
        super().__init__()
        self._results: dict[str, FLModel] = {}

    def reset_stats(self) -> None:
        self._results = {}

    def accept_model(self, model: FLModel) -> None:
        site = (model.meta or {}).get("client_name")
        if not site or site in self._results:
            raise ValueError(f"a round's result with {'a repeated' if site else 'no'} client name: {site}")
        self._results[site] = model

    def aggregate_model(self) -> FLModel:
        return BaseFedAvg.aggregate_fn([self._results[site] for site in sorted(self._results)])


class CentralEvaluator(FLComponent):
    """Evaluates global models on the central test set (``data``: its datalist folder)."""

    def __init__(self, bundle: str, config_files: list[str], data: str, method: str, overrides: dict | None = None):
        super().__init__()
        self.bundle = bundle
        self.config_files = config_files
        self.data = data
        self.method = method
        self.overrides = overrides or {}
        self._algo = None
        self._results: dict = {"rounds": []}

    def _out(self, fl_ctx: FLContext) -> Path:
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        return Path(run_dir) / CENTRAL_DIR

    def _evaluator(self, out: Path) -> MonaiAlgo:
        if self._algo is None:
            root = str(find_bundle(self.bundle))
            self._algo = MonaiAlgo(
                bundle_root=root, config_train_filename=None, config_evaluate_filename=self.config_files,
                eval_kwargs={**self.overrides, "bundle_root": root, "dataset_dir": self.data,
                             "output_dir": str(out / "work"), "ckpt_dir": str(out / "work"),
                             "eval_folds": "$[@test_fold]"})  # overrides' age_stats: the pooled ones
            self._algo.initialize({ExtraItems.CLIENT_NAME: "server"})
        return self._algo

    def evaluate(self, name: str, params: dict, fl_ctx: FLContext) -> dict:
        """Metrics of ``params`` on the central test set; its predictions saved as ``<name>.csv``."""
        out = self._out(fl_ctx)
        weights = {k: torch.as_tensor(v) for k, v in params.items()}
        metrics = self._evaluator(out).evaluate(ExchangeObject(weights=weights)).metrics
        predictions = pd.read_csv(out / "work" / "predictions.csv", dtype={"id": str})
        predictions = predictions.assign(outer_fold=self.overrides["test_fold"], method=self.method)[PREDICTION_COLUMNS]
        atomic_write_csv(predictions, out / f"{name}.csv")
        result = {"val_loss": float(metrics["val_loss"]),
                  "auroc": auroc(predictions["label"], predictions["probability"]),
                  "patients": len(predictions)}
        self.log_info(fl_ctx, f"central test, {name}: AUROC {result['auroc']:.3f}, loss {result['val_loss']:.4f}")
        return result

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        try:
            if event_type == AppEventType.AFTER_LEARNABLE_PERSIST:
                self._evaluate_round(fl_ctx)
            elif event_type == EventType.END_RUN:
                self._finish(fl_ctx)
        except Exception as error:  # noqa: BLE001 -- stop the job with the reason instead of logging on
            self.system_panic(f"central evaluation failed: {type(error).__name__}: {error}", fl_ctx)

    def _checkpoint(self, fl_ctx: FLContext, name: str) -> Path:
        return Path(fl_ctx.get_engine().get_workspace().get_app_dir(fl_ctx.get_job_id())) / name

    def _load(self, path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    def _save(self, fl_ctx: FLContext) -> None:
        atomic_write_json(self._results, self._out(fl_ctx) / "metrics.json")

    def _evaluate_round(self, fl_ctx: FLContext) -> None:
        """The global model just persisted (this round's aggregate)."""
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        params = self._load(self._checkpoint(fl_ctx, DefaultCheckpointFileName.GLOBAL_MODEL))
        self._results["rounds"].append({"round": current, **self.evaluate(f"round_{current}", params, fl_ctx)})
        self._save(fl_ctx)

    def _finish(self, fl_ctx: FLContext) -> None:
        """Evaluate the final and the best global model; remove the working folder."""
        if not self._results["rounds"]:
            return  # no round finished: the job's own checks report it
        # FedAvg persists every round's model: the final one is the last round's, already evaluated
        last = self._results["rounds"][-1]
        self._results["final"] = {k: v for k, v in last.items() if k != "round"}
        shutil.copy2(self._out(fl_ctx) / f"round_{last['round']}.csv", self._out(fl_ctx) / "final.csv")
        best = self._checkpoint(fl_ctx, DefaultCheckpointFileName.BEST_GLOBAL_MODEL)
        if best.is_file():
            self._results["best"] = self.evaluate("best", self._load(best), fl_ctx)
        self._save(fl_ctx)
        shutil.rmtree(self._out(fl_ctx) / "work", ignore_errors=True)
