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


def network(bundle: str, config_files: list[str], overrides: dict):
    """The bundle's ``network_def``, built without data (the server's initial global model).

    Its age buffers are ``overrides["age_stats"]``, the statistics pooled over the sites' training
    patients, which stay fixed: clients neither send nor overwrite them."""
    root = find_bundle(bundle)
    parser = ConfigParser()
    parser.read_config([str(root / f) for f in config_files])
    parser.update({**overrides, "bundle_root": str(root)})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return parser.get_parsed_content("network_def")
