"""Per-site datalists for federated runs: each simulated hospital sees only its own patients.

The prepared cohort's ``central_fold`` (default 4) is the central held-out test set: its patients
are in no site's data. Every other patient goes to the datalist of its ``site``; within a site,
``val_fold`` validates locally and the remaining folds train. Image paths are made absolute so a
site's datalist works from any folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from preprocessing.atomic import atomic_write_json


class SiteDataError(ValueError):
    """The cohort cannot be split into usable sites."""


def _absolute(entry: dict, root: Path, visits: list[str]) -> dict:
    entry = dict(entry)
    for visit in visits:
        if visit in entry:
            entry[visit] = str((root / entry[visit]).resolve())
    return entry


def split_sites(data: Path, out: Path, sites: int | None = None, central_fold: int = 4,
                val_fold: int = 3) -> tuple[dict[str, Path], Path]:
    """Write ``out/<site>/datalist.json`` for the first ``sites`` sites (all when None) and
    ``out/central/datalist.json`` (the central test patients of every site); return
    ({site: folder}, central folder). Raises SiteDataError naming the site and the problem."""
    path = Path(data) / "datalist.json"
    if not path.is_file():
        raise SiteDataError(f"{path}: not found (--data must be a prepared cohort)")
    datalist = json.loads(path.read_text())
    visits = datalist.get("visits", [])
    entries = [_absolute(e, Path(data), visits) for e in datalist["training"]]
    names = sorted({e["site"] for e in entries})
    if sites is not None:
        if sites > len(names):
            raise SiteDataError(f"--sites {sites}: the cohort has {len(names)} site(s) ({', '.join(names)})")
        names = names[:sites]
    central = [e for e in entries if e["fold"] == central_fold and e["site"] in names]
    if len({e["label"] for e in central}) < 2:
        raise SiteDataError(f"central test fold {central_fold} needs patients of both classes, it has "
                            f"{len(central)} patient(s) {dict(Counter(e['label'] for e in central))}")
    folders = {}
    for name in names:
        own = [e for e in entries if e["site"] == name and e["fold"] != central_fold]
        train = [e for e in own if e["fold"] != val_fold]
        val = [e for e in own if e["fold"] == val_fold]
        if not train:
            raise SiteDataError(f"site {name} has no training patients")
        if len({e["label"] for e in train}) < 2:
            raise SiteDataError(f"site {name}: its {len(train)} training patients are all of one class "
                                f"(pCR = {train[0]['label']}); a local model cannot learn from it")
        if not val:
            raise SiteDataError(f"site {name} has no validation patients (fold {val_fold})")
        folders[name] = _write(datalist, own, out / name)
    return folders, _write(datalist, central, out / "central")


def _write(datalist: dict, entries: list[dict], folder: Path) -> Path:
    atomic_write_json({**datalist, "numTraining": len(entries), "training": entries}, folder / "datalist.json")
    return folder


def baseline_cohorts(sites: dict[str, Path], central: Path, out: Path) -> dict[str, Path]:
    """Cohorts of the non-federated baselines, each with the same central test patients:
    ``centralized`` (every site's patients pooled) and ``local_<site>`` (one site's alone)."""
    def read(folder: Path) -> dict:
        return json.loads((folder / "datalist.json").read_text())

    test = read(central)["training"]
    own = {name: read(folder)["training"] for name, folder in sites.items()}
    cohorts = {"centralized": [e for entries in own.values() for e in entries]}
    cohorts.update({f"local_{name}": entries for name, entries in own.items()})
    return {name: _write(read(central), entries + test, out / name) for name, entries in cohorts.items()}
