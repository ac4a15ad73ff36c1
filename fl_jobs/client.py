"""NVFlare client of a federated job: one hospital site training its own copy of a bundle.

The loop of NVFlare's Client API, with MONAI's ``MonaiAlgo`` running the bundle's own train and
evaluate configs:

- ``train``: evaluate the received global model on the site's validation patients, train
  ``--local-epochs`` epochs, send the weight difference with those metrics;
- ``validate`` (cross-site evaluation): send the received model's metrics on the site's
  validation patients;
- ``submit_model`` (cross-site evaluation): send the site's best local weights (the file the
  bundle's ``CheckpointSaver`` keeps them in).

Only weights, weight differences and metrics leave the site. Parameters matching
``--exclude-vars`` stay local: they are neither sent nor overwritten by the global model. So do
the age z-score buffers: every site and the server build the network with the same pooled age
statistics (``--overrides``' ``age_stats``), which aggregation must neither average nor reset.
"""

from __future__ import annotations

import argparse
import json
import re

import nvflare.client as flare
import torch
from monai.fl.client import MonaiAlgo
from monai.fl.utils.constants import ExtraItems, FlStatistics, ModelType
from monai.fl.utils.exchange_object import ExchangeObject
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from evaluation.runner import checkpoint_settings, relative_config_files
from fl_jobs.bundle import best_checkpoint, find_bundle

# the networks' age z-score buffers (the pCR bundles' clinical.age_*, the fusion bundle's rhpc.age_*
# and extractor.age_*), fixed at the pooled age statistics
FROZEN = r"(?:^|\.)age_(?:mean|std)$"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle folder name in this app's custom/")
    parser.add_argument("--data", required=True, help="this site's datalist folder")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--exclude-vars", default=None, help="regex of parameters kept local")
    parser.add_argument("--overrides", default="{}", help="JSON object of bundle config overrides")
    return parser.parse_args()


def keep_shared(params: dict, exclude: re.Pattern) -> dict:
    return {k: v for k, v in params.items() if not exclude.search(k)}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    exclude = re.compile("|".join(f"(?:{r})" for r in (FROZEN, args.exclude_vars) if r))
    bundle_root = str(find_bundle(args.bundle))
    # no weight averaging across iterations (ema_momentum None): each round starts from the global
    # weights, and an average reaching back into earlier rounds would mix this site's weights from
    # before aggregation into its validation and best checkpoint; FedAvg is the averaging here
    overrides = {"bundle_root": bundle_root, "dataset_dir": args.data, "ema_momentum": None,
                 **json.loads(args.overrides)}
    train_files = relative_config_files(("train",), args.profile)
    flare.init()
    site = flare.get_site_name()
    algo = MonaiAlgo(
        bundle_root=bundle_root,
        local_epochs=args.local_epochs,
        send_weight_diff=True,
        config_train_filename=train_files,
        train_kwargs=dict(overrides),
        best_model_filepath=best_checkpoint(bundle_root, train_files, overrides),
        config_evaluate_filename=relative_config_files(("train", "evaluate"), args.profile),
        # evaluation on the site's own validation patients (the test fold is held centrally)
        eval_kwargs={**overrides, "eval_folds": "$[@val_fold]",
                     # received weights come without a checkpoint: the architecture is this training's
                     "model_settings": checkpoint_settings(bundle_root, train_files, overrides)},
    )
    algo.initialize({ExtraItems.CLIENT_NAME: site})
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        if flare.is_submit_model():
            best = algo.get_weights({ExtraItems.MODEL_TYPE: ModelType.BEST_MODEL})
            flare.send(FLModel(params=best.weights, params_type=ParamsType.FULL))
            continue
        global_weights = ExchangeObject(weights=keep_shared(received.params, exclude))
        metrics = {k: float(v) for k, v in algo.evaluate(global_weights).metrics.items()}
        if flare.is_evaluate():
            flare.send(FLModel(metrics=metrics))
            continue
        algo.train(global_weights)
        update = algo.get_weights()
        steps = int(update.statistics[FlStatistics.NUM_EXECUTED_ITERATIONS])
        flare.send(FLModel(params=keep_shared(update.weights, exclude), params_type=ParamsType.DIFF,
                           metrics=metrics, meta={"NUM_STEPS_CURRENT_ROUND": steps}))
    algo.finalize()


if __name__ == "__main__":
    main()
