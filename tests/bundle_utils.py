"""Helpers for tests of the MONAI bundles."""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from monai.bundle import ConfigParser

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SHARED_SCRIPTS = ("data.py", "layers.py", "outputs.py", "onnx_export.py", "checkpoint.py")


@contextmanager
def bundle_scripts(bundle: str):
    """A bundle's ``scripts`` modules, imported as MONAI does (bundle root on ``sys.path``) and
    forgotten afterwards, so that the other bundle's ``scripts`` package can be imported next."""
    root = str(BUNDLES / bundle)
    sys.path.insert(0, root)
    try:
        names = [p.stem for p in (BUNDLES / bundle / "scripts").glob("*.py") if p.stem != "__init__"]
        yield SimpleNamespace(**{n: importlib.import_module(f"scripts.{n}") for n in names})
    finally:
        forget_scripts(root)


def forget_scripts(root: str) -> None:
    """Drop a bundle root from ``sys.path`` and its ``scripts`` package from ``sys.modules``."""
    while root in sys.path:
        sys.path.remove(root)
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def merged_config(bundle: str, *names: str) -> ConfigParser:
    """``train.json`` of ``bundle`` with override files applied, unresolved."""
    files = [str(BUNDLES / bundle / "configs" / f"{n}.json") for n in ("train",) + names]
    parser = ConfigParser()
    parser.read_config(files)
    return parser
