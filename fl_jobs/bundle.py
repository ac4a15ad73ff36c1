"""The bundle a federated job trains, as clients and server find it in their app folders.

NVFlare puts each app's ``custom`` folder on ``sys.path``; the job copies the bundle there, so
every client trains its own copy and writes its own ``models/``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from evaluation.methods import BUNDLES

COPIED = ("configs", "scripts", "docs", "LICENSE")  # models/ and eval/ of local runs stay behind


def copy_bundle(name: str, dest: Path) -> Path:
    """A clean copy of ``bundles/<name>`` (configs, scripts, docs, licence) at ``dest/<name>``."""
    target = dest / name
    shutil.rmtree(target, ignore_errors=True)
    for item in COPIED:
        source = BUNDLES / name / item
        if source.is_dir():
            shutil.copytree(source, target / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / item)
    return target


def find_bundle(name: str) -> Path:
    """The copy of bundle ``name`` in this app (the first ``sys.path`` folder that holds it)."""
    for entry in sys.path:
        root = Path(entry or ".") / name
        if (root / "configs" / "train.json").is_file():
            return root.resolve()
    raise FileNotFoundError(f"bundle {name} is in no folder of sys.path (the job copies it into each app's custom/)")


def network(bundle: str, config_files: list[str], overrides: dict):
    """The bundle's ``network_def``, built without data (the server's initial global model).

    Its age buffers are ``overrides["age_stats"]``, the statistics pooled over the sites' training
    patients, which stay fixed: clients neither send nor overwrite them. Its initial weights are
    drawn with the bundle's ``seed``, so that a job run twice starts from the same global model."""
    root = find_bundle(bundle)
    parser = ConfigParser()
    parser.read_config([str(root / f) for f in config_files])
    parser.update({**overrides, "bundle_root": str(root)})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    torch.manual_seed(parser.get_parsed_content("seed"))
    return parser.get_parsed_content("network_def")


def best_checkpoint(root: str, config_files: list[str], overrides: dict) -> str:
    """Where the bundle's training keeps its best model: ``save_dir`` / ``key_metric_filename`` of
    the ``CheckpointSaver`` in ``validate#handlers`` that saves by the key metric (``model.pt``
    of the pCR bundles, ``model_<model>.pt`` of the fusion bundle's networks)."""
    parser = ConfigParser()
    parser.read_config([os.path.join(root, f) for f in config_files])
    parser.update({**overrides, "bundle_root": root})
    for i, handler in enumerate(parser.get("validate#handlers") or []):
        if "CheckpointSaver" in str(handler.get("_target_", "")) and handler.get("save_key_metric"):
            where = f"validate#handlers#{i}#"
            return os.path.join(parser.get_parsed_content(where + "save_dir"),
                                parser.get_parsed_content(where + "key_metric_filename"))
    raise ValueError(f"{root}: no CheckpointSaver of the key metric in validate#handlers of {', '.join(config_files)}")
