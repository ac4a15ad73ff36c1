"""The bundle a federated job trains, as clients and server find it in their app folders.

NVFlare puts each app's ``custom`` folder on ``sys.path``; the job copies the bundle there, so
every client trains its own copy and writes its own ``models/``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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


def network(bundle: str, config_files: list[str], overrides: dict | None = None):
    """The bundle's ``network_def``, built without data (the server's initial global model).

    Age statistics are buffers of the network; the global model's come from the clients."""
    root = find_bundle(bundle)
    parser = ConfigParser()
    parser.read_config([str(root / f) for f in config_files])
    parser.update({**(overrides or {}), "bundle_root": str(root), "network_def#age_stats": [0.0, 1.0]})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return parser.get_parsed_content("network_def")
