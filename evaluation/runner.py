"""Runs the bundles' own configs (``python -m monai.bundle run``) for one data split.

Each bundle run is a child process, exactly as a user would start it, so the two bundles'
``scripts`` packages never meet in one interpreter. A finished training leaves ``trained.json``
beside its checkpoint; a rerun with the same cohort, settings and bundle files reuses it, an
interrupted training is started again, and a model trained with other settings is never
overwritten: the run stops with both settings named.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from preprocessing.atomic import atomic_write_text

from . import baselines
from .methods import BUNDLES, DUALTASK, MRP, TEACHER, Method, model_key
from .progress import Progress, watch

PROFILES = {"cpu": ("profile_cpu",), "gpu": ()}
log = logging.getLogger("evaluation")


EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


class BundleRunError(RuntimeError):
    pass


class SettingsConflict(ValueError):
    """The output folder holds a model trained with other settings."""


def settings_text(record: dict) -> str:
    """The settings of a ``trained.json`` record that tell two trainings apart, as one line."""
    return ", ".join(f"{k} {record.get(k)}" for k in ("cohort", "bundle_files", "profile", "epochs", "seed", "config"))


def bundle_digest(bundle: str) -> str:
    """Digest of a bundle's configs and scripts: a model is reused only with the files it was trained by."""
    digest = hashlib.sha256()
    for path in sorted((BUNDLES / bundle).glob("configs/*.json")) + sorted((BUNDLES / bundle).glob("scripts/*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def root_cause(log_text: str) -> str:
    """The first exception line of a log: MONAI wraps a config error in further RuntimeErrors,
    so the innermost (first printed) exception names the real problem."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    causes = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (causes or lines or ["(no output)"])[0]


def relative_config_files(configs: tuple[str, ...], profile: str) -> list[str]:
    """A bundle's config files relative to its root: the first, then the profile's overrides, then the rest."""
    return [f"configs/{name}.json" for name in configs[:1] + PROFILES[profile] + configs[1:]]


def config_files(bundle: str, configs: tuple[str, ...], profile: str) -> list[str]:
    """Paths of a bundle's config files (order of ``relative_config_files``)."""
    return [str(BUNDLES / bundle / path) for path in relative_config_files(configs, profile)]


def merge_top_level(paths) -> dict:
    """Top-level keys of config files, each file overriding the ones before it."""
    merged = {}
    for path in paths:
        merged.update(json.loads(Path(path).read_text()))
    return merged


def merged_settings(bundle: str, configs: tuple[str, ...], profile: str) -> dict:
    """Top-level keys of a bundle's config files after the later files' overrides."""
    return merge_top_level(config_files(bundle, configs, profile))


def checkpoint_settings(root: Path, config_files: list[str], overrides: dict) -> dict:
    """The ``model_settings`` a training by ``config_files`` (relative to the bundle ``root``) with
    ``overrides`` saves in its checkpoint: what ``evaluate.json`` reads from a checkpoint, given
    directly where weights arrive without one (federated rounds)."""
    merged = {**merge_top_level(Path(root) / name for name in config_files), **overrides}
    return {k: merged[k] for k in merged["model_settings"] if k != "_target_"}


def threads_per_job(jobs: int) -> int | None:
    """Torch threads for each of ``jobs`` concurrent bundle runs: the cores shared out, so that
    concurrent runs do not oversubscribe the CPU (None for a single job: torch's default)."""
    return max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None


@dataclass(frozen=True)
class Split:
    val_fold: int
    test_fold: int

    @property
    def name(self) -> str:
        return f"test{self.test_fold}_val{self.val_fold}"


@dataclass
class Runner:
    data: Path
    out: Path
    profile: str = "cpu"
    epochs: int | None = None
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # config keys set in every run
    threads: int | None = None  # torch CPU threads per bundle run (None: torch's default)
    progress: Progress = field(default_factory=Progress)

    @cached_property
    def cohort(self) -> str:
        """Digest of the datalist: a trained model is reused only for the same cohort and folds."""
        return hashlib.sha256((self.data / "datalist.json").read_bytes()).hexdigest()[:16]

    @cached_property
    def entries(self) -> list[dict]:
        """The datalist's patient entries."""
        return json.loads((self.data / "datalist.json").read_text())["training"]

    @cached_property
    def clinical_fields(self) -> list[dict]:
        """The clinical fields the cohort records (the bundles' encoding of it)."""
        return baselines.bundle_data().cohort_fields(str(self.data))

    @cached_property
    def fold_of(self) -> dict[str, int]:
        """Patient id -> fold."""
        return {e["id"]: e["fold"] for e in self.entries}

    @cached_property
    def bundle_digests(self) -> dict[str, str]:
        """Digests of the bundles' files when this run started (edits during a run change nothing)."""
        return {bundle: bundle_digest(bundle) for bundle in (TEACHER, DUALTASK, MRP)}

    def bundle_epochs(self, bundle: str) -> int:
        """Epochs of one training of ``bundle`` under this run's profile (or ``epochs``): each bundle's
        own, as stage 2's profile may train longer than stage 1's."""
        return self.epochs or int(merged_settings(bundle, ("train",), self.profile)["epochs"])

    def run_bundle(self, bundle: str, configs: tuple[str, ...], log: Path, on_epoch=None, **overrides) -> None:
        """``python -m monai.bundle run`` with the bundle's configs + profile + override files;
        ``on_epoch(match)`` is called for each validated epoch the run logs (``progress.EPOCH_LINE``)."""
        root = BUNDLES / bundle
        files = config_files(bundle, configs, self.profile)
        overrides = {**self.overrides, **overrides}
        overrides.setdefault("dataset_dir", str(self.data))
        overrides.setdefault("seed", self.seed)
        if self.epochs is not None:
            overrides.setdefault("epochs", self.epochs)
        command = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(root),
                   "--config_file", repr(files), "--meta_file", str(root / "configs" / "metadata.json"),
                   "--logging_file", str(root / "configs" / "logging.conf")]
        for key, value in overrides.items():
            command += [f"--{key}", str(value)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as stream:
            stream.write(" ".join(command) + "\n")
            stream.flush()
            start = stream.tell()
            env = dict(os.environ, TQDM_DISABLE="1")
            if self.threads:
                env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
        status = watch(process, log, on_epoch or (lambda match: None), offset=start)
        if status != 0:
            raise BundleRunError(f"{bundle} {' + '.join(configs)} failed (exit {status}): "
                                 f"{root_cause(log.read_text())} -- full log: {log}")

    def model_dir(self, key: str, split: Split) -> Path:
        return self.out / "models" / key / split.name

    def record(self, bundle: str, train: tuple[str, ...], split: Split, network: str | None = None) -> dict:
        """What ``trained.json`` holds: everything that tells two trainings apart."""
        record = {"bundle": bundle, "overrides": list(train), "split": split.name,
                  "cohort": self.cohort, "bundle_files": self.bundle_digests[bundle],
                  "profile": self.profile, "epochs": self.epochs,
                  "seed": self.seed, "config": self.overrides}
        if network is not None:  # a network of a multi-network bundle (mrp_fusion's ``model``)
            record["model"] = network
        return json.loads(json.dumps(record, default=str))

    def is_trained(self, bundle: str, train: tuple[str, ...], split: Split, teacher: tuple[str, ...] | None = None,
                   network: str | None = None) -> bool:
        """Whether a model of these settings is finished; a model of other settings in its folder
        is a ``SettingsConflict`` (it is never overwritten)."""
        run_dir = self.model_dir(model_key(bundle, train, teacher, network), split)
        marker = run_dir / "trained.json"
        if not marker.is_file():
            return False
        found, record = json.loads(marker.read_text()), self.record(bundle, train, split, network)
        if found != record:
            raise SettingsConflict(f"{run_dir} holds a model trained with other settings ({settings_text(found)}); "
                                   f"this run's settings: {settings_text(record)}. Choose another --out, "
                                   "or delete that folder yourself")
        return True

    def train(self, bundle: str, train: tuple[str, ...], split: Split, teacher: tuple[str, ...] | None = None,
              network: str | None = None) -> Path:
        """Train (or reuse) one model on ``split``; stage 2 first trains and exports its teacher.
        ``network``: the ``model`` key of a multi-network bundle (mrp_fusion)."""
        run_dir = self.model_dir(model_key(bundle, train, teacher, network), split)
        if self.is_trained(bundle, train, split, teacher, network):
            return run_dir
        if run_dir.exists():  # an interrupted training: no finished model to lose
            log.info("%s: unfinished training of an earlier run, starting it again", run_dir)
            shutil.rmtree(run_dir)
        overrides = dict(ckpt_dir=run_dir / "models", output_dir=run_dir / "eval", val_fold=split.val_fold,
                         test_fold=split.test_fold)
        if teacher is not None:
            overrides["teacher_features"] = self.export_teacher(teacher, split)
        if network is not None:
            overrides["model"] = network
        name = f"{model_key(bundle, train, teacher, network)} {split.name}"
        epochs = self.bundle_epochs(bundle)
        self.run_bundle(bundle, ("train",) + train, run_dir / "train.log",
                        on_epoch=lambda m: self.progress.epoch(name, int(m.group(1)), epochs, m.group(2)), **overrides)
        self.progress.model_done()
        atomic_write_text(json.dumps(self.record(bundle, train, split, network)) + "\n", run_dir / "trained.json")
        return run_dir

    def export_teacher(self, teacher: tuple[str, ...], split: Split) -> Path:
        """T2 representations of the split's training and validation patients from a teacher
        trained on exactly this split (the test fold never reaches it)."""
        run_dir = self.train(TEACHER, teacher, split)
        features = run_dir / "models" / "teacher_features.csv"
        if not features.is_file():
            self.run_bundle(TEACHER, ("train",) + teacher + ("export",), run_dir / "export.log",
                            ckpt_dir=run_dir / "models", output_dir=run_dir / "eval", val_fold=split.val_fold,
                            test_fold=split.test_fold, teacher_features=features)
        return features

    def predict(self, method: Method, split: Split, folds: list[int]) -> pd.DataFrame:
        """``id, probability, label`` of the patients in ``folds`` from the method's model on ``split``."""
        if method.features is not None:  # classical reference: fitted on the split's training folds
            train = sorted(set(self.fold_of.values()) - {split.val_fold, split.test_fold})
            return baselines.fit_predict(self.entries, self.clinical_fields, method.features, train, folds)
        if method.network == "mrp":
            return self.predict_ensemble(method, split, folds)
        if method.network is not None:
            return self.predict_network(method, split, folds)
        run_dir = self.train(method.bundle, method.train, split, method.teacher)
        out_dir = run_dir / "eval" / method.name
        overrides = dict(ckpt_dir=run_dir / "models", output_dir=out_dir, val_fold=split.val_fold,
                         test_fold=split.test_fold, eval_folds=repr(list(folds)))
        if method.teacher is not None:
            overrides["teacher_features"] = self.export_teacher(method.teacher, split)
        self.run_bundle(method.bundle, ("train",) + method.train + ("evaluate",) + method.test,
                        out_dir / "evaluate.log", **overrides)
        return pd.read_csv(out_dir / "predictions.csv", dtype={"id": str})

    # --- MRP (mrp_fusion): one network per method, or the ensemble of the imr and img networks ---

    def predict_network(self, method: Method, split: Split, folds: list[int]) -> pd.DataFrame:
        """``id, probability, label`` from one network of a multi-network bundle (``evaluate.json``
        with its ``model`` key), its MRI visits restricted to the method's phase (``eval_visits``).
        A patient without the network's input (no mammogram; no MRI visit of the phase) is left out."""
        run_dir = self.train(method.bundle, method.train, split, network=method.network)
        out_dir = run_dir / "eval" / method.name
        overrides = dict(ckpt_dir=run_dir / "models", output_dir=out_dir, val_fold=split.val_fold,
                         test_fold=split.test_fold, eval_folds=repr(list(folds)), model=method.network)
        if method.visits is not None:
            overrides["eval_visits"] = repr(list(method.visits))
        self.run_bundle(method.bundle, ("train",) + method.train + ("evaluate",) + method.test,
                        out_dir / "evaluate.log", **overrides)
        return _labelled(out_dir / "predictions.csv", method)

    def ensemble_dir(self, method: Method, split: Split) -> Path:
        """Where the MRP ensemble of ``method`` on ``split`` keeps its weight and outputs."""
        return self.out / "ensembles" / method.name / split.name

    def ensemble_checkpoints(self, method: Method, split: Split) -> dict[str, Path]:
        """The imr and img checkpoints of the MRP ensemble (trained, or reused, on ``split``)."""
        imr = self.train(method.bundle, method.train, split, network="imr")
        img = self.train(method.bundle, method.img_train, split, network="img")
        return {"mr_ckpt": imr / "models" / "model_imr.pt", "mg_ckpt": img / "models" / "model_img.pt"}

    def choose_ensemble_weight(self, method: Method, split: Split, checkpoints: dict[str, Path]) -> dict:
        """The bundle's ``ensemble.json`` on the split's validation fold, with the method's MRI
        visits: both models on the validation patients only, the mammography weight that maximises
        their AUROC -> ``ENSEMBLE_DIR/models/ensemble.json`` (returned)."""
        folder = self.ensemble_dir(method, split)
        overrides = dict(ckpt_dir=folder / "models", output_dir=folder / "validation", val_fold=split.val_fold,
                         test_fold=split.test_fold, **checkpoints)
        if method.visits is not None:
            overrides["infer_visits"] = repr(list(method.visits))
        self.run_bundle(method.bundle, ("inference", "ensemble"), folder / "ensemble.log", **overrides)
        return json.loads((folder / "models" / "ensemble.json").read_text())

    def predict_ensemble(self, method: Method, split: Split, folds: list[int]) -> pd.DataFrame:
        """``id, probability, label`` of the MRP ensemble: the weight chosen on the validation fold
        (``choose_ensemble_weight``), then the bundle's ``inference.json`` on ``folds`` with that
        weight unchanged: ``w * p_img + (1 - w) * p_imr``, the one model's probability for a patient
        with one modality (``models_used`` in ``ENSEMBLE_DIR/eval/predictions.csv``)."""
        checkpoints = self.ensemble_checkpoints(method, split)
        self.choose_ensemble_weight(method, split, checkpoints)
        folder = self.ensemble_dir(method, split)
        overrides = dict(ckpt_dir=folder / "models", output_dir=folder / "eval", infer_folds=repr(list(folds)),
                         **checkpoints)
        if method.visits is not None:
            overrides["infer_visits"] = repr(list(method.visits))
        self.run_bundle(method.bundle, ("inference",), folder / "inference.log", **overrides)
        return _labelled(folder / "eval" / "predictions.csv", method)


def _labelled(path: Path, method: Method) -> pd.DataFrame:
    """``id, probability, label`` of a bundle's predictions CSV (every patient with a label)."""
    frame = pd.read_csv(path, dtype={"id": str})
    if "label" not in frame or frame["label"].isna().any():
        raise ValueError(f"{path}: method {method.name} needs a pCR label for every predicted patient")
    return frame[["id", "probability", "label"]]
