"""Federated training of the mrp_fusion bundle (MRP of Gao et al.) in the NVFlare simulator.

``python fl_jobs/mrp_fusion/job.py --data PREPARED --workspace WS [--models imr,img,rhpc] [--sites K] ...``

One FedAvg job per network of the bundle (``fl_jobs.job.run_job``, the bundle's ``model`` key):
``imr`` (longitudinal MRI) and ``rhpc`` (tabular baseline) with every site as a client, ``img``
(mammography) with only the sites some of whose patients have mammograms; each job's age
statistics pooled over the patients its network sees, its global models evaluated on the
central test set by the server, and its cross-site matrix. Then, with both image models, the
MRP ensemble: the mammography weight chosen on the sites' validation patients pooled (never
on the central test patients) with the bundle's ``ensemble.json``, and the MRP probability of
every central test patient with its ``inference.json``. See fl_jobs/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch

from evaluation.cv import PREDICTION_COLUMNS
from evaluation.metrics import auroc
from evaluation.runner import BundleRunError, Runner
from fl_jobs.job import STATS_JOB, Job, JobFailed, OptionError, add_common_options, age_statistics, check_args, run_job
from fl_jobs.sites import SiteDataError, check_central, pooled_validation, read_entries, sites_with, split_sites
from preprocessing.atomic import atomic_write_csv, atomic_write_json

BUNDLE = "mrp_fusion"
MODELS = ("imr", "img", "rhpc")
NEEDS = {"img": "mammograms"}  # the datalist key of the only patients a network sees
log = logging.getLogger("fl_jobs.mrp_fusion")


def parser() -> argparse.ArgumentParser:
    p = add_common_options(argparse.ArgumentParser(prog="python fl_jobs/mrp_fusion/job.py",
                                                   description=__doc__.splitlines()[0]))
    p.add_argument("--models", default=",".join(MODELS),
                   help="networks to train, comma-separated among imr, img, rhpc; the MRP ensemble needs imr and img")
    p.add_argument("--export", type=Path, default=None,
                   help="write each network's NVFlare job folder here instead of running (no ensemble)")
    return p


def model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models or len(set(models)) < len(models):
        raise OptionError(f"--models {text}: give each of {', '.join(MODELS)} at most once, comma-separated")
    return models


def job_of(model: str) -> Job:
    return Job(BUNDLE, f"{BUNDLE}_{model}_fedavg", {"model": model}, NEEDS.get(model), f"fl_{BUNDLE}_{model}")


def clients_of(models: list[str], folders: dict[str, Path], central: Path, args) -> tuple[dict, dict]:
    """The client sites of each model's job and, per model, the sites that are not its clients
    with the reason. A network that needs ``NEEDS[model]`` trains at the sites having it; none
    having it, or a central test set without both classes among those patients, is an error."""
    clients, left_out = {}, {}
    for model in models:
        key = NEEDS.get(model)
        if key is None:
            clients[model], left_out[model] = dict(folders), {}
            continue
        having, without = sites_with(folders, key, args.val_fold)
        if not having:
            raise SiteDataError(f"no site has patients with {key} ({', '.join(folders)} have none): the {model} "
                                f"job (model={model}) cannot run; leave it out with --models "
                                f"{','.join(m for m in models if m != model) or 'imr'}")
        check_central([e for e in read_entries(central) if e.get(key)], args.central_fold, f" with {key}")
        clients[model], left_out[model] = having, {site: f"no patient with {key}" for site in without}
    return clients, left_out


def job_args(args, model: str, sites: list[str]) -> argparse.Namespace:
    """The options of one model's job: ``--min-clients`` capped at its number of clients."""
    own = copy.copy(args)
    if args.min_clients is not None and args.min_clients > len(sites):
        log.info("%s job: --min-clients %d capped at its %d client(s)", model, args.min_clients, len(sites))
        own.min_clients = len(sites)
    check_args(BUNDLE, own, sites)
    return own


def global_checkpoint(summary: dict, dest: Path) -> str:
    """The job's global model (best by the clients' validation loss, else final) with the
    architecture the bundle's checkpoints carry, at ``dest``, so evaluate.json and inference.json
    use it with no flags; returns which model it is."""
    model = Path(summary["global_model"])
    best = model.with_name("best_" + model.name)
    chosen = "best" if best.is_file() else "final"
    weights = torch.load(best if best.is_file() else model, map_location="cpu", weights_only=True)["model"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights, "settings": summary["model_settings"]}, dest)
    return chosen


def mrp_ensemble(args, jobs: dict, central: Path, validation: Path, workspace: Path) -> dict:
    """Both global image models through the bundle's own configs: ``ensemble.json`` on the pooled
    validation patients (the mammography weight), then ``inference.json`` on the central test set."""
    models_dir, out = workspace / "global_models", workspace / "ensemble"
    chosen = {model: global_checkpoint(jobs[model], models_dir / f"model_{model}.pt") for model in ("imr", "img")}
    runner = Runner(validation, out, args.profile, seed=args.seed, threads=None if args.gpu else args.threads)
    runner.run_bundle(BUNDLE, ("inference", "ensemble"), out / "ensemble.log", ckpt_dir=models_dir,
                      output_dir=out / "validation", val_fold=args.val_fold, test_fold=args.central_fold)
    record = json.loads((models_dir / "ensemble.json").read_text())
    runner.run_bundle(BUNDLE, ("inference",), out / "inference.log", dataset_dir=central, ckpt_dir=models_dir,
                      output_dir=out / "central_test", infer_folds=[args.central_fold])
    predictions = pd.read_csv(out / "central_test" / "predictions.csv", dtype={"id": str})
    path = workspace / "central_test" / "mrp.csv"
    atomic_write_csv(predictions.assign(outer_fold=args.central_fold, method=f"fl_{BUNDLE}_mrp")[
        PREDICTION_COLUMNS + ["models_used"]], path)
    excluded = sorted(set(map(str, (e["id"] for e in read_entries(central)))) - set(predictions["id"]))
    return {
        "global_models": {model: {"model": which, "path": str(models_dir / f"model_{model}.pt")}
                          for model, which in chosen.items()},
        "ensemble": {"weight_img": record["weight"], "weight_imr": 1.0 - record["weight"],
                     "chosen_on": f"the sites' validation patients pooled (fold {args.val_fold} of "
                                  f"{', '.join(jobs['imr']['config']['sites'])}); never the central test set",
                     "patients": record["patients"], "patients_with_both": record["patients_with_both"],
                     "val_auroc": record["val_auroc"], "file": str(models_dir / "ensemble.json")},
        "mrp": {"auroc": auroc(predictions["label"], predictions["probability"]), "patients": len(predictions),
                "models_used": dict(Counter(predictions["models_used"])), "excluded": excluded,
                "predictions": str(path)},
    }


def central_summary(job: dict) -> dict:
    """The central-test result of the job's global model the ensemble uses (best, else final)."""
    central = job["central_test"]
    chosen = "best" if "best" in central else "final"
    return {"model": chosen, **central[chosen], "predictions": job["central_predictions"][chosen]}


def run(args, customize=None) -> dict:
    """Split the cohort, run each model's job, then the MRP ensemble; ``WS/summary.json``."""
    workspace = args.workspace.resolve()
    models = model_list(args.models)
    folders, central = split_sites(args.data, workspace / "sites", args.sites, args.central_fold, args.val_fold)
    clients, left_out = clients_of(models, folders, central, args)
    own_args = {model: job_args(args, model, list(clients[model])) for model in models}
    with_ensemble = {"imr", "img"} <= set(models) and not args.export
    validation = pooled_validation(folders, args.val_fold, workspace / "sites" / "central_validation") \
        if with_ensemble else None
    for model in models:
        note = "".join(f"; {site}: {why}, not a client" for site, why in left_out[model].items())
        log.info("%s job: clients %s%s", model, ", ".join(clients[model]), note)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    summary = {"status": "failed", "config": {**config, "bundle": BUNDLE, "models": models}, "sites": list(folders),
               "jobs": {m: {"clients": list(clients[m]), "not_clients": left_out[m]} for m in models}}
    start = time.monotonic()
    try:
        ages = {}  # one statistics job per set of patients (imr and rhpc see every patient)
        for model in models:
            key = NEEDS.get(model)
            if key not in ages:
                ages[key] = age_statistics(own_args[model], clients[model], workspace, key,
                                           STATS_JOB + (f"_{key}" if key else ""))
        for model in models:
            result = run_job(job_of(model), own_args[model], clients[model], central, workspace / model, customize,
                             age=ages[NEEDS.get(model)])
            summary["jobs"][model].update(result)
            if result["status"] == "failed":
                raise JobFailed(f"{model} job: {result['reason']}")
        if args.export:
            summary["status"] = "exported"
        else:
            summary["central_test"] = {model: central_summary(summary["jobs"][model]) for model in models}
            if with_ensemble:
                found = mrp_ensemble(args, summary["jobs"], central, validation, workspace)
                summary["central_test"]["mrp"] = found.pop("mrp")
                summary.update(found)
            summary["status"] = "ok"
    except (JobFailed, BundleRunError) as error:
        summary["reason"] = str(error)
    summary["wall_time_s"] = round(time.monotonic() - start, 1)
    atomic_write_json(summary, workspace / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    # parsed before nvflare.recipe is imported: that import consumes --export from sys.argv
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        summary = run(args)
    except (SiteDataError, OptionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary["status"] == "failed":
        print(f"error: federated job failed: {summary['reason']} (see {args.workspace / 'summary.json'})",
              file=sys.stderr)
        return 1
    lines = []
    for model, job in summary["jobs"].items():
        left = "".join(f"; {site}: {why}, not a client" for site, why in job["not_clients"].items())
        result = summary.get("central_test", {}).get(model)
        auc = f": central-test AUROC {result['auroc']:.3f} ({result['model']} global model)" if result else ""
        lines.append(f"{model} (clients {', '.join(job['clients'])}{left}){auc}")
    if "ensemble" in summary:
        mrp = summary["central_test"]["mrp"]
        lines.append(f"MRP ensemble (w_img {summary['ensemble']['weight_img']:.2f}, chosen on "
                     f"{summary['ensemble']['patients']} validation patients): central-test AUROC {mrp['auroc']:.3f}, "
                     f"{mrp['patients']} patients ({', '.join(f'{n} {k}' for k, n in mrp['models_used'].items())})")
    print("\n".join(lines + [f"summary: {args.workspace / 'summary.json'}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
