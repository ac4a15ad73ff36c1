"""Federated training of one bundle in the NVFlare simulator: FedAvg across the cohort's sites.

``python fl_jobs/<bundle>/job.py --data PREPARED --sites K --rounds R --local-epochs E --workspace WS``
splits the prepared cohort by site (``fl_jobs.sites``), builds NVFlare's ``FedAvgRecipe`` with one
client per site running ``fl_jobs/client.py`` on its own copy of the bundle, the server's
central-test evaluator (``fl_jobs.server``) and cross-site evaluation, runs it (or exports it
with ``--export``), checks the workspace and writes ``WS/summary.json``. Before it, a short
federated-statistics job pools the age mean and standard deviation of every site's training
patients (``fl_jobs.stats``), which clients and server then hold fixed in the network.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.methods import BUNDLES
from evaluation.runner import EXCEPTION_LINE, PROFILES, checkpoint_settings, merged_settings, relative_config_files
from fl_jobs.bundle import copy_bundle
from fl_jobs.sites import SiteDataError, split_sites, teacher_features_file
from preprocessing.atomic import atomic_write_json

CLIENT = Path(__file__).resolve().parent / "client.py"
# Seconds a client waits after each task before asking for the next one (the server sends it with
# every task; NVFlare's default, 2 s, was most of a round at the CPU profile's one-second epochs).
TASK_REQUEST_INTERVAL = 0.5
STATS_JOB, STATS_OUTPUT = "age_statistics", "statistics/age.json"  # the output is relative to the server's run folder
log = logging.getLogger("fl_jobs")


def set_task_request_interval(recipe) -> None:
    recipe.add_server_config({"server": {"task_request_interval": TASK_REQUEST_INTERVAL}})


class JobFailed(RuntimeError):
    """The simulator ran, but the job did not finish its work."""


class OptionError(ValueError):
    """Options that cannot work together or with this cohort."""


@dataclass(frozen=True)
class Job:
    """One federated training of a bundle. ``overrides``: config keys every copy of the bundle gets
    beyond the common ones (e.g. ``model`` of the fusion bundle, which holds several networks);
    ``patients_with``: the datalist key of the only patients the network sees (e.g.
    ``mammograms``), whose ages are then the pooled statistics; ``method``: the method name of the
    central-test predictions (default ``fl_<bundle>``)."""

    bundle: str
    name: str
    overrides: dict = field(default_factory=dict)
    patients_with: str | None = None
    method: str | None = None


def add_common_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of every federated run (one job, or the two-stage pipeline)."""
    p.add_argument("--data", type=Path, required=True, help="prepared cohort (datalist.json with site and fold)")
    p.add_argument("--workspace", type=Path, required=True, help="simulator workspace; WS/summary.json at the end")
    p.add_argument("--sites", type=int, default=None, help="the first K sites of the cohort (default: all)")
    p.add_argument("--rounds", type=int, default=None, help="FL rounds (default: profile epochs / local epochs)")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs per round")
    p.add_argument("--min-clients", type=int, default=None, help="clients needed per round (default: all sites)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="bundle profile (as in evaluation)")
    p.add_argument("--gpu", default=None, help="GPU ids for the clients, e.g. 0,1 (default: CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per client")
    p.add_argument("--central-fold", type=int, default=4, help="fold held out as the central test set")
    p.add_argument("--val-fold", type=int, default=3, help="fold each site validates on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--privacy", choices=("none", "percentile"), default="none",
                   help="percentile: NVFlare's PercentilePrivacy on the sent weight differences")
    p.add_argument("--percentile", type=int, default=10, help="PercentilePrivacy percentile")
    p.add_argument("--gamma", type=float, default=0.01, help="PercentilePrivacy clipping bound")
    p.add_argument("--exclude-vars", default=None, help="regex of parameters that stay at each site")
    p.add_argument("--min-count", type=int, default=10,
                   help="fewest training patients a site needs to share its age statistics (NVFlare's default)")
    return p


def parser(bundle: str) -> argparse.ArgumentParser:
    p = add_common_options(argparse.ArgumentParser(
        prog=f"python fl_jobs/{bundle}/job.py", description=f"Federated training of the {bundle} bundle (NVFlare simulator)."))
    p.add_argument("--export", type=Path, default=None, help="write the NVFlare job folder here instead of running")
    p.add_argument("--name", default=None, help="job name (default: <bundle>_fedavg)")
    if bundle == "pcr_dualtask":
        p.add_argument("--teacher-features", type=Path, required=True,
                       help="folder with <site>/teacher_features.csv exported by each site with the global teacher")
    return p


def default_rounds(bundle: str, profile: str, local_epochs: int) -> int:
    """FL rounds x local epochs = the epochs of centralized training under the profile."""
    return max(1, int(merged_settings(bundle, ("train",), profile)["epochs"]) // local_epochs)


def check_args(bundle: str, args: argparse.Namespace, sites: list[str]) -> None:
    for option in ("rounds", "local_epochs", "threads", "min_count"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise OptionError(f"--{option.replace('_', '-')} must be at least 1")
    if args.rounds is None:
        args.rounds = default_rounds(bundle, args.profile, args.local_epochs)
    if args.min_clients is None:
        args.min_clients = len(sites)
    if not 1 <= args.min_clients <= len(sites):
        raise OptionError(f"--min-clients {args.min_clients}: must be between 1 and --sites ({len(sites)})")
    for path in (args.data, args.workspace):
        if " " in str(path.resolve()):  # client arguments are split on whitespace
            raise OptionError(f"{path}: paths with spaces are not supported")
    if bundle == "pcr_dualtask":
        for site in sites:
            features = teacher_features_file(args.teacher_features, site)
            if not features.is_file():
                raise OptionError(f"site {site}: {features} not found (each site exports its patients' T2 "
                                    "representations with the global teacher; fl_jobs/two_stage.py does it)")


def bundle_overrides(args: argparse.Namespace, age: dict, clinical_fields: list[dict], job: Job | None = None) -> dict:
    """Config overrides of every copy of the bundle: folds, seed, the pooled age statistics (and
    teacher-target scale), the cohort's clinical fields (the server builds its model without data)
    and the job's own."""
    return {"val_fold": args.val_fold, "test_fold": args.central_fold, "seed": args.seed,
            "age_stats": [age["mean"], age["std"]], "clinical_fields": clinical_fields,
            **({"teacher_target_rms": age["teacher_target_rms"]} if "teacher_target_rms" in age else {}),
            **(job.overrides if job else {})}


def global_model_settings(job: Job, args: argparse.Namespace, overrides: dict) -> dict:
    """The architecture of the job's models (what a checkpoint of its training would carry):
    global weights reach the evaluators without a checkpoint."""
    return checkpoint_settings(BUNDLES / job.bundle, relative_config_files(("train",), args.profile), overrides)


def cohort_fields(folders: list[Path]) -> list[dict]:
    """The clinical fields every datalist in ``folders`` records; they must agree."""
    fields = {str(f): json.loads((f / "datalist.json").read_text()).get("clinical_fields") for f in folders}
    first = next(iter(fields.values()))
    differ = [name for name, f in fields.items() if f != first]
    if not first or differ:
        raise JobFailed(f"the sites' datalists record {'no' if not first else 'different'} clinical fields "
                        f"({', '.join(differ) or 'all'}): prepare every site with one cohort schema")
    return first


def age_statistics(args: argparse.Namespace, folders: dict[str, Path], workspace: Path,
                   patients_with: str | None = None, name: str = STATS_JOB,
                   teacher_features: Path | None = None) -> dict:
    """Count, mean and standard deviation of age over the training patients of the sites whose
    datalists are ``folders`` (only those with ``patients_with`` when given), pooled by NVFlare's
    ``FedStatsRecipe`` in the simulator (``workspace/name``); its minimum-count guard refuses a small
    site. With ``teacher_features`` (``<site>/teacher_features.csv``), also ``teacher_target_rms``:
    the root mean square of those patients' teacher representations, pooled the same way."""
    from nvflare.app_common.app_constant import StatisticsConstants as StC
    from nvflare.recipe import SimEnv
    from nvflare.recipe.fedstats import FedStatsRecipe

    from fl_jobs.stats import DATASET, FEATURE, TEACHER_MS, AgeStatistics

    sites = list(folders)
    sites_dir = {folder.resolve().parent for folder in folders.values()}
    if len(sites_dir) != 1 or any(folder.name != site for site, folder in folders.items()):
        raise ValueError(f"site datalists must be <one folder>/<site>/, got {folders}")  # as split_sites writes them
    recipe = FedStatsRecipe(name=name, stats_output_path=STATS_OUTPUT, sites=sites,
                            statistic_configs={"count": {}, "sum": {}, "mean": {}, "stddev": {}},
                            stats_generator=AgeStatistics(str(sites_dir.pop()), args.val_fold, args.central_fold,
                                                          patients_with,
                                                          str(teacher_features.resolve()) if teacher_features else None),
                            min_count=args.min_count)
    set_task_request_interval(recipe)
    job_dir = workspace / name
    try:
        recipe.run(SimEnv(clients=sites, num_threads=len(sites), workspace_root=str(workspace)))
    except RuntimeError as error:
        raise JobFailed(f"federated age statistics: {logged_failure(job_dir) or error}") from error
    path = job_dir / "server" / "simulate_job" / STATS_OUTPUT
    pooled = json.loads(path.read_text()) if path.is_file() else {}

    def value(statistic: str, who: str, feature: str = FEATURE):
        return pooled.get(feature, {}).get(statistic, {}).get(who, {}).get(DATASET)

    # NVFlare's MinCountCleanser keeps a small site's count but drops its other statistics (checked
    # before the logs: a second round with no site left fails with an unhelpful error)
    refused = [f"{site} ({value('count', site)} training patients)" for site in sites
               if value("count", site) is not None and value("mean", site) is None]
    if refused:
        raise JobFailed(f"federated age statistics: site(s) {', '.join(refused)} refused by the minimum count "
                        f"(--min-count {args.min_count})")
    failure = logged_failure(job_dir)
    if failure:
        raise JobFailed(f"federated age statistics: {failure}")
    missing = [site for site in sites if value("count", site) is None]
    if missing:
        raise JobFailed(f"federated age statistics: no result from site(s) {', '.join(missing)} in {path}")
    count, mean, std = (value(statistic, StC.GLOBAL) for statistic in ("count", "mean", "stddev"))
    if None in (count, mean, std):
        raise JobFailed(f"federated age statistics: no pooled count, mean and stddev of {FEATURE} in {path}")
    # NVFlare pools the sample standard deviation; the bundles z-score with the population one (floored)
    result = {"count": int(count), "mean": mean, "std": max(std * math.sqrt((count - 1) / count), 1e-6)}
    if teacher_features:
        # from the pooled sum and count: NVFlare writes statistics rounded to 4 decimals, which
        # leaves a small mean square (0.02 for the tests' 1-round teacher) 3 significant digits
        total, n = value("sum", StC.GLOBAL, TEACHER_MS), value("count", StC.GLOBAL, TEACHER_MS)
        if total is None or not n:
            raise JobFailed(f"federated age statistics: no pooled sum and count of {TEACHER_MS} in {path}")
        result["teacher_target_rms"] = math.sqrt(total / n)
    return result


def client_args(bundle: str, args: argparse.Namespace, site: str, folder: Path, overrides: dict) -> str:
    # a client reads the clinical fields from its own datalist (cohort_fields checked they agree)
    overrides = {k: v for k, v in overrides.items() if k != "clinical_fields"}
    if bundle == "pcr_dualtask":
        overrides["teacher_features"] = str(teacher_features_file(args.teacher_features, site).resolve())
    text = (f"--bundle {bundle} --data {folder.resolve()} --local-epochs {args.local_epochs} "
            f"--profile {args.profile} --threads {0 if args.gpu else args.threads} "
            f"--overrides {json.dumps(overrides, separators=(',', ':'))}")
    if args.exclude_vars:
        text += f" --exclude-vars {args.exclude_vars}"
    return text


def job_name(bundle: str, args: argparse.Namespace) -> str:
    return args.name or f"{bundle}_fedavg"


def build_recipe(job: Job, args: argparse.Namespace, sites: dict[str, Path], central: Path, source: Path,
                 overrides: dict):
    """NVFlare's FedAvgRecipe for the job's bundle: per-site clients, central evaluator, cross-site
    evaluation; every copy of the bundle (clients', server's model and evaluator) gets ``overrides``
    (``bundle_overrides``: among them the pooled age statistics)."""
    from nvflare.apis.dxo import DataKind
    from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.client.config import TransferType
    from nvflare.recipe import add_cross_site_evaluation, set_per_site_config

    from fl_jobs.server import CentralEvaluator, SiteOrderAggregator

    bundle = job.bundle
    files = relative_config_files(("train",), args.profile)
    recipe = FedAvgRecipe(
        name=job.name,
        model={"path": "fl_jobs.bundle.network",
               "args": {"bundle": bundle, "config_files": files, "overrides": overrides}},
        min_clients=args.min_clients,
        num_rounds=args.rounds,
        train_script=str(CLIENT),
        params_transfer_type=TransferType.DIFF,
        aggregator=SiteOrderAggregator(),
        aggregator_data_kind=DataKind.WEIGHT_DIFF,
        # the best global model: lowest validation loss of the clients, never the central test set
        key_metric="val_loss",
        key_metric_mode="min",
    )
    set_per_site_config(recipe, {site: {"train_args": client_args(bundle, args, site, folder, overrides)}
                                 for site, folder in sites.items()})
    # every client app (and the server's) gets its own copy: custom/<bundle>/
    recipe.add_client_file(str(source))
    recipe.add_server_file(str(source))
    # the global weights arrive without a checkpoint: the evaluator is given the training's architecture
    settings = global_model_settings(job, args, overrides)
    evaluator = CentralEvaluator(bundle, files + ["configs/evaluate.json"], str(central.resolve()),
                                 method=job.method or f"fl_{bundle}", overrides={**overrides, "model_settings": settings})
    recipe._job.to_server(evaluator, id="central_evaluator")  # the recipe API has no public hook for components
    if args.privacy == "percentile":
        recipe.add_client_output_filter(PercentilePrivacy(percentile=args.percentile, gamma=args.gamma,
                                                          data_kinds=[DataKind.WEIGHT_DIFF]), tasks=["train"])
    add_cross_site_evaluation(recipe)
    set_task_request_interval(recipe)
    return recipe


def logged_failure(job_dir: Path) -> str | None:
    """The first failure the sites' (then the server's) logs record: site, exception, log file."""
    logs = sorted(job_dir.glob("*/log.txt"), key=lambda path: (path.parent.name == "server", path.parent.name))
    for log_file in logs:
        lines = log_file.read_text().splitlines()
        errors = [line for line in lines if " - ERROR - " in line or "system panic" in line.lower()]
        if errors:
            causes = [line.strip() for line in lines if EXCEPTION_LINE.match(line)]
            return f"{log_file.parent.name}: {(causes or errors)[0]} (log: {log_file})"
    return None


def check_workspace(job_dir: Path, sites: list[str]) -> dict:
    """What the finished job left: the simulator can exit 0 after an aborted job."""
    server = job_dir / "server" / "simulate_job"
    failure = logged_failure(job_dir)
    if failure:
        raise JobFailed(failure)
    model = server / "app_server" / "FL_global_model.pt"
    if not model.is_file():
        raise JobFailed(f"no global model at {model}")
    metrics_path = server / "central_test" / "metrics.json"
    central = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if "final" not in central:
        raise JobFailed(f"no central-test evaluation of the final global model in {metrics_path}")
    cross_path = server / "cross_site_val" / "cross_val_results.json"
    cross = json.loads(cross_path.read_text()) if cross_path.is_file() else {}
    missing = [s for s in sites if not cross.get(s)]
    if missing:
        raise JobFailed(f"cross-site validation results missing for {', '.join(missing)} in {cross_path}")
    return {"global_model": str(model), "central_test": central, "cross_site": cross,
            "central_predictions": {k: str(server / "central_test" / f"{k}.csv") for k in ("final", "best")
                                    if k in central}}


def run(bundle: str, args: argparse.Namespace, customize=None) -> dict:
    """Split the cohort into sites (``WS/sites``) and run the bundle's job on all of them (``run_job``).

    ``customize(recipe)``, when given, adds to the recipe before it runs (filters, components)."""
    workspace = args.workspace.resolve()
    folders, central = split_sites(args.data, workspace / "sites", args.sites, args.central_fold, args.val_fold)
    return run_job(Job(bundle, job_name(bundle, args)), args, folders, central, workspace, customize)


def run_job(job: Job, args: argparse.Namespace, folders: dict[str, Path], central: Path, workspace: Path,
            customize=None, age: dict | None = None) -> dict:
    """Pool the age statistics (unless ``age`` is given), build, run and check one job with the
    sites ``folders`` as clients; the summary written to ``workspace/summary.json`` (when
    exporting, the job folder carries the pooled statistics). ``args`` gets its defaults for
    this job's sites (``check_args``)."""
    from nvflare.recipe import SimEnv

    bundle = job.bundle
    check_args(bundle, args, list(folders))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config.update(bundle=bundle, sites=list(folders), **({"overrides": job.overrides} if job.overrides else {}))
    if not args.gpu:  # one torch thread per client, no oversubscription of the cores
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.environ["TQDM_DISABLE"] = "1"
    job_dir = workspace / job.name
    summary = {"status": "failed", "job_dir": str(job_dir), "config": config}
    start = time.monotonic()
    try:
        if age is None:
            age = age_statistics(args, folders, workspace, job.patients_with,
                                 teacher_features=getattr(args, "teacher_features", None))
        summary["age_statistics"] = age
        overrides = bundle_overrides(args, age, cohort_fields([central, *folders.values()]), job)
        source = copy_bundle(bundle, workspace / "bundle_source").parent
        recipe = build_recipe(job, args, folders, central, source, overrides)
        if customize is not None:
            customize(recipe)
        if args.export:
            recipe.export(str(args.export))
            command = f"nvflare simulator {args.export / recipe.name} -w WS -c {','.join(folders)} -t {len(folders)}"
            log.info("job folder written to %s (run it with: %s)", args.export / recipe.name, command)
            return {"status": "exported", "job_dir": str(args.export), "config": config, "age_statistics": age}
        recipe.run(SimEnv(clients=list(folders), num_threads=len(folders), gpu_config=args.gpu,
                          workspace_root=str(workspace)))
        summary.update(check_workspace(job_dir, list(folders)), status="ok",
                       model_settings=global_model_settings(job, args, overrides))
    except JobFailed as error:
        summary["reason"] = str(error)
    except RuntimeError as error:  # the simulator's exit status: the logs say why
        summary["reason"] = logged_failure(job_dir) or str(error)
    summary["wall_time_s"] = round(time.monotonic() - start, 1)
    atomic_write_json(summary, workspace / "summary.json")
    return summary


def main(bundle: str, argv: list[str] | None = None) -> int:
    # parsed before nvflare.recipe is imported: that import consumes --export from sys.argv
    args = parser(bundle).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        summary = run(bundle, args)
    except (SiteDataError, OptionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary["status"] == "failed":
        print(f"error: federated job failed: {summary['reason']} (see {args.workspace / 'summary.json'})",
              file=sys.stderr)
        return 1
    if summary["status"] == "ok":
        central = summary["central_test"]
        best = f"best global model (clients' validation loss) {central['best']['auroc']:.3f}, " if "best" in central else ""
        print(f"{bundle}: central-test AUROC: {best}final global model {central['final']['auroc']:.3f}; "
              f"summary: {args.workspace / 'summary.json'}")
    return 0
