"""Runs the bundles' own configs (``python -m monai.bundle run``) for one data split.

Each bundle run is a child process, exactly as a user would start it, so the two bundles'
``scripts`` packages never meet in one interpreter. A finished training leaves ``trained.json``
beside its checkpoint; a rerun with the same cohort and settings reuses it (an interrupted or
differently configured training is started again).
"""

from __future__ import annotations

import hashlib
import json
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

from .methods import BUNDLES, TEACHER, Method, model_key

PROFILES = {"cpu": ("profile_cpu",), "gpu": ()}


EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")


class BundleRunError(RuntimeError):
    pass


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


def merged_settings(bundle: str, configs: tuple[str, ...], profile: str) -> dict:
    """Top-level keys of a bundle's config files after the later files' overrides."""
    merged = {}
    for path in config_files(bundle, configs, profile):
        merged.update(json.loads(Path(path).read_text()))
    return merged


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

    @cached_property
    def cohort(self) -> str:
        """Digest of the datalist: a trained model is reused only for the same cohort and folds."""
        return hashlib.sha256((self.data / "datalist.json").read_bytes()).hexdigest()[:16]

    @cached_property
    def fold_of(self) -> dict[str, int]:
        """Patient id -> fold."""
        return {e["id"]: e["fold"] for e in json.loads((self.data / "datalist.json").read_text())["training"]}

    def run_bundle(self, bundle: str, configs: tuple[str, ...], log: Path, **overrides) -> None:
        """``python -m monai.bundle run`` with the bundle's configs + profile + override files."""
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
            env = dict(os.environ, TQDM_DISABLE="1")
            if self.threads:
                env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
        if done.returncode != 0:
            raise BundleRunError(f"{bundle} {' + '.join(configs)} failed (exit {done.returncode}): "
                                 f"{root_cause(log.read_text())} -- full log: {log}")

    def model_dir(self, key: str, split: Split) -> Path:
        return self.out / "models" / key / split.name

    def train(self, bundle: str, train: tuple[str, ...], split: Split, teacher: tuple[str, ...] | None = None) -> Path:
        """Train (or reuse) one model on ``split``; stage 2 first trains and exports its teacher."""
        run_dir = self.model_dir(model_key(bundle, train, teacher), split)
        marker = run_dir / "trained.json"
        record = {"bundle": bundle, "overrides": list(train), "split": split.name, "cohort": self.cohort,
                  "profile": self.profile, "epochs": self.epochs, "seed": self.seed, "config": self.overrides}
        if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(record, default=str)):
            return run_dir
        shutil.rmtree(run_dir, ignore_errors=True)  # no checkpoint or export of another setting survives
        overrides = dict(ckpt_dir=run_dir / "models", output_dir=run_dir / "eval", val_fold=split.val_fold,
                         test_fold=split.test_fold)
        if teacher is not None:
            overrides["teacher_features"] = self.export_teacher(teacher, split)
        self.run_bundle(bundle, ("train",) + train, run_dir / "train.log", **overrides)
        atomic_write_text(json.dumps(record, default=str) + "\n", marker)
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
        run_dir = self.train(method.bundle, method.train, split, method.teacher)
        out_dir = run_dir / "eval" / method.name
        overrides = dict(ckpt_dir=run_dir / "models", output_dir=out_dir, val_fold=split.val_fold,
                         test_fold=split.test_fold, eval_folds=repr(list(folds)))
        if method.teacher is not None:
            overrides["teacher_features"] = self.export_teacher(method.teacher, split)
        self.run_bundle(method.bundle, ("train",) + method.train + ("evaluate",) + method.test,
                        out_dir / "evaluate.log", **overrides)
        return pd.read_csv(out_dir / "predictions.csv", dtype={"id": str})
