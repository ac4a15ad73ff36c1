"""The two-stage method trained federatedly, beside centralized and local-only training.

``python fl_jobs/two_stage.py --data PREPARED --workspace WS [--sites 3] [--rounds R] ...``

1. ``pcr_teacher`` by FedAvg (``WS/teacher``);
2. each site exports its own patients' T2 representations with the global teacher
   (``WS/teacher_features/<site>/``), as it would in its own hospital;
3. ``pcr_dualtask`` by FedAvg with those targets (``WS/dualtask``);
4. the baselines, with the same epochs (rounds x local epochs) and the same central test set:
   the two stages trained on every site's patients pooled (centralized), and on each site's
   alone (local); then the evaluation report (``WS/report/``) and ``WS/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from evaluation.cv import holdout
from evaluation.metrics import auroc
from evaluation.methods import BUNDLES, METHODS, TEACHER
from evaluation.report import build_report, write_report
from evaluation.runner import (BundleRunError, Runner, SettingsConflict, Split, checkpoint_settings,
                               relative_config_files, root_cause)
from evaluation.progress import minutes, watch
from fl_jobs.job import OptionError, add_common_options, default_rounds
from fl_jobs.sites import SiteDataError, baseline_cohorts, split_sites, teacher_features_file
from preprocessing.atomic import atomic_write_json

FL_JOBS = Path(__file__).resolve().parent
SHARED = ("data", "sites", "rounds", "local_epochs", "min_clients", "profile", "gpu", "threads", "central_fold",
          "val_fold", "seed", "privacy", "percentile", "gamma", "exclude_vars", "min_count")
log = logging.getLogger("fl_jobs.two_stage")
ROUND_LINE = re.compile(r"Round (\d+) started")  # NVFlare's FedAvg controller, rounds counted from 0


class StageFailed(RuntimeError):
    pass


def parser() -> argparse.ArgumentParser:
    p = add_common_options(argparse.ArgumentParser(prog="python fl_jobs/two_stage.py",
                                                   description=__doc__.splitlines()[0]))
    p.add_argument("--no-baselines", action="store_true", help="skip centralized and local-only training")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the report's CIs")
    return p


def job_argv(args, workspace: Path) -> list[str]:
    argv = ["--workspace", str(workspace)]
    for key in SHARED:
        value = getattr(args, key)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_job(bundle: str, args, workspace: Path, log_path: Path, extra: list[str] = ()) -> dict:
    """One federated job as its own process (each bundle's ``scripts`` package in its own
    interpreter), its rounds reported as they start."""
    rounds = args.rounds or default_rounds(bundle, args.profile, args.local_epochs)
    started = time.perf_counter()

    def on_round(match):
        done_rounds, elapsed = int(match.group(1)), time.perf_counter() - started
        left = f"; about {minutes(elapsed / done_rounds * (rounds - done_rounds))} left" if done_rounds else ""
        log.info("federated %s: round %d of %d started%s", bundle, done_rounds + 1, rounds, left)

    with open(log_path, "w") as stream:
        process = subprocess.Popen([sys.executable, str(FL_JOBS / bundle / "job.py")] + job_argv(args, workspace)
                                   + list(extra), stdout=stream, stderr=subprocess.STDOUT)
    status = watch(process, log_path, on_round, ROUND_LINE)
    if status != 0:
        errors = [line for line in log_path.read_text().splitlines() if line.startswith("error:")]
        raise StageFailed(f"{bundle} federated job failed: {(errors or [root_cause(log_path.read_text())])[-1]} "
                          f"-- log: {log_path}")
    return json.loads((workspace / "summary.json").read_text())


def global_teacher(summary: dict, dest: Path) -> Path:
    """The global teacher (best by the clients' validation loss, else final) as ``dest/model.pt``."""
    model = Path(summary["global_model"])
    best = model.with_name("best_" + model.name)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(best if best.is_file() else model, dest / "model.pt")
    return dest


def export_features(args, sites: dict[str, Path], teacher: Path, out: Path) -> Path:
    """Each site's T2 representations of its own patients from the global teacher."""
    for site, folder in sites.items():
        runner = Runner(folder, out, args.profile, seed=args.seed)
        # the global model file holds weights only: the architecture is the federated training's
        settings = checkpoint_settings(BUNDLES / TEACHER, relative_config_files(("train",), args.profile), {})
        runner.run_bundle(TEACHER, ("train", "export"), out / site / "export.log", ckpt_dir=teacher,
                          model_settings=settings,
                          output_dir=out / site / "eval", val_fold=args.val_fold, test_fold=args.central_fold,
                          teacher_features=teacher_features_file(out, site))
    return out


def baselines(args, cohorts: dict[str, Path], out: Path, epochs: int) -> dict[str, tuple[pd.DataFrame, float]]:
    """Two-stage models trained without federation: name -> (central-test predictions, wall seconds)."""
    results = {}
    for name, folder in cohorts.items():
        start = time.monotonic()
        # one training at a time with torch's default threads: the machine is the baseline's alone
        runner = Runner(folder, out / name, args.profile, epochs=epochs, seed=args.seed)
        test = holdout(runner, [METHODS["dualtask"]], Split(args.val_fold, args.central_fold)).test["dualtask"]
        results[name] = (test.assign(method=name), time.monotonic() - start)
        log.info("%s: central-test predictions of %d patients (%.0f s)", name, len(test), results[name][1])
    return results


def run(args) -> dict:
    workspace = args.workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    sites, central = split_sites(args.data, workspace / "sites", args.sites, args.central_fold, args.val_fold)
    start = time.monotonic()
    log.info("stage 1: federated teacher over %s", ", ".join(sites))
    teacher = run_job("pcr_teacher", args, workspace / "teacher", workspace / "teacher.log")
    log.info("stage 1: each site exports its patients' T2 representations with the global teacher")
    features = export_features(args, sites, global_teacher(teacher, workspace / "global_teacher"),
                               workspace / "teacher_features")
    log.info("stage 2: federated dual-task")
    dualtask = run_job("pcr_dualtask", args, workspace / "dualtask", workspace / "dualtask.log",
                       ["--teacher-features", str(features)])
    fl_seconds = time.monotonic() - start
    central_test = dualtask["central_test"]
    chosen = "best" if "best" in central_test else "final"
    federated = pd.read_csv(dualtask["central_predictions"][chosen], dtype={"id": str}).assign(method="federated")
    summary = {"status": "ok", "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "sites": list(sites), "federated": {"model": chosen, "auroc": central_test[chosen]["auroc"],
                                                  "wall_time_s": round(fl_seconds, 1)},
               "teacher": {"central_test": teacher["central_test"], "cross_site": teacher["cross_site"],
                           "age_statistics": teacher["age_statistics"]},
               "dualtask": {"central_test": central_test, "cross_site": dualtask["cross_site"],
                            "age_statistics": dualtask["age_statistics"]}}
    predictions = {"federated": federated}
    if not args.no_baselines:
        epochs = int(dualtask["config"]["rounds"]) * args.local_epochs
        log.info("baselines: centralized and local-only two-stage training, %d epochs each", epochs)
        for name, (frame, seconds) in baselines(args, baseline_cohorts(sites, central, workspace / "cohorts"),
                                                workspace / "baselines", epochs).items():
            predictions[name] = frame
            summary[name] = {"auroc": auroc(frame["label"], frame["probability"]), "wall_time_s": round(seconds, 1)}
        summary["fl_over_centralized_wall_time"] = round(fl_seconds / summary["centralized"]["wall_time_s"], 2)
    report = build_report(predictions, workspace / "report", reference="federated", n_resamples=args.resamples,
                          seed=args.seed, about={"job": "two-stage federated training (FedAvg)", "sites": ", ".join(sites),
                                                 "profile": args.profile, "rounds x local epochs":
                                                 f"{dualtask['config']['rounds']} x {args.local_epochs}",
                                                 "central test": f"fold {args.central_fold} of every site"})
    write_report(report, workspace / "report", title="pCR prediction: federated vs centralized vs local training")
    summary["report"] = str(workspace / "report" / "report.html")
    summary["console"] = report.summary
    atomic_write_json(summary, workspace / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        summary = run(args)
    except (SiteDataError, OptionError, StageFailed, BundleRunError, SettingsConflict) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, (SiteDataError, OptionError, SettingsConflict)) else 1
    print(summary["console"])
    lines = [f"federated ({summary['federated']['model']} global model): central-test AUROC "
             f"{summary['federated']['auroc']:.3f}, {summary['federated']['wall_time_s']:.0f} s"]
    for name in [k for k in summary if k == "centralized" or k.startswith("local_")]:
        lines.append(f"{name}: central-test AUROC {summary[name]['auroc']:.3f}, {summary[name]['wall_time_s']:.0f} s")
    if "fl_over_centralized_wall_time" in summary:
        lines.append(f"wall time federated / centralized: {summary['fl_over_centralized_wall_time']:.2f}")
    print("\n".join(lines + [f"report: {summary['report']}", f"summary: {args.workspace / 'summary.json'}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
