"""Per-site datalists for federated runs: each simulated hospital sees only its own patients.

The prepared cohort's ``central_fold`` (default 4) is the central held-out test set: its patients
are in no site's data. Every other patient goes to the datalist of its ``site``; within a site,
``val_fold`` validates locally and the remaining folds train. Image paths (MRI visits, mammograms)
are made absolute so a site's datalist works from any folder.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from preprocessing.atomic import atomic_write_json


class SiteDataError(ValueError):
    """The cohort cannot be split into usable sites."""


def teacher_features_file(folder: Path | str, site: str) -> Path:
    """Where a site's teacher representations are: ``folder/<site>/teacher_features.csv`` (the
    two-stage pipeline's export writes them there; the dual-task job reads them)."""
    return Path(folder) / site / "teacher_features.csv"


def _absolute(entry: dict, root: Path, visits: list[str]) -> dict:
    entry = dict(entry)
    for visit in visits:
        if visit in entry:
            entry[visit] = str((root / entry[visit]).resolve())
    if entry.get("mammograms"):  # {view: path} of the multimodal cohorts
        entry["mammograms"] = {view: str((root / path).resolve()) for view, path in entry["mammograms"].items()}
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
    check_central(central, central_fold)
    folders = {}
    for name in names:
        own = [e for e in entries if e["site"] == name and e["fold"] != central_fold]
        check_site(name, own, val_fold)
        folders[name] = _write(datalist, own, out / name)
    return folders, _write(datalist, central, out / "central")


def check_central(entries: list[dict], central_fold: int, patients: str = "") -> None:
    """The central test set (``patients``: which of them a network sees, e.g. "with mammograms")
    needs both classes."""
    if len({e["label"] for e in entries}) < 2:
        raise SiteDataError(f"central test fold {central_fold} needs patients{patients} of both classes, it has "
                            f"{len(entries)} patient(s){patients} {dict(Counter(e['label'] for e in entries))}")


def check_site(name: str, own: list[dict], val_fold: int, patients: str = "") -> None:
    """A site's own patients (``patients``: which of them a network sees) train a local model:
    training patients of both classes and validation patients."""
    train = [e for e in own if e["fold"] != val_fold]
    if not train:
        raise SiteDataError(f"site {name} has no training patients{patients}")
    if len({e["label"] for e in train}) < 2:
        raise SiteDataError(f"site {name}: its {len(train)} training patients{patients} are all of one class "
                            f"(pCR = {train[0]['label']}); a local model cannot learn from it")
    if not any(e["fold"] == val_fold for e in own):
        raise SiteDataError(f"site {name} has no validation patients{patients} (fold {val_fold})")


def read_entries(folder: Path) -> list[dict]:
    """The patient entries of ``folder/datalist.json``."""
    return json.loads((Path(folder) / "datalist.json").read_text())["training"]


def sites_with(sites: dict[str, Path], key: str, val_fold: int) -> tuple[dict[str, Path], list[str]]:
    """The sites some of whose own patients have ``key`` in their datalist entry (e.g.
    ``mammograms``: the clients of a job whose network needs them), each checked as ``split_sites``
    checks a site but on those patients alone; and the sites whose patients have none of it."""
    having, without = {}, []
    for name, folder in sites.items():
        own = [e for e in read_entries(folder) if e.get(key)]
        if own:
            check_site(name, own, val_fold, f" with {key}")
            having[name] = folder
        else:
            without.append(name)
    return having, without


def pooled_validation(sites: dict[str, Path], val_fold: int, out: Path) -> Path:
    """Every site's validation patients (fold ``val_fold``) in ``out/datalist.json``: the
    validation set of a choice made centrally after training (e.g. an ensemble weight). The
    central test patients are in no site's datalist, so never among them."""
    datalist = json.loads((next(iter(sites.values())) / "datalist.json").read_text())
    entries = [e for folder in sites.values() for e in read_entries(folder) if e["fold"] == val_fold]
    if len({e["label"] for e in entries}) < 2:
        raise SiteDataError(f"the sites' validation patients (fold {val_fold}, pooled) need both classes, they are "
                            f"{len(entries)} patient(s) {dict(Counter(e['label'] for e in entries))}")
    return _write(datalist, entries, out)


def _write(datalist: dict, entries: list[dict], folder: Path) -> Path:
    atomic_write_json({**datalist, "numTraining": len(entries), "training": entries}, folder / "datalist.json")
    return folder


def baseline_cohorts(sites: dict[str, Path], central: Path, out: Path) -> dict[str, Path]:
    """Cohorts of the non-federated baselines, each with the same central test patients:
    ``centralized`` (every site's patients pooled) and ``local_<site>`` (one site's alone)."""
    test = read_entries(central)
    own = {name: read_entries(folder) for name, folder in sites.items()}
    cohorts = {"centralized": [e for entries in own.values() for e in entries]}
    cohorts.update({f"local_{name}": entries for name, entries in own.items()})
    header = json.loads((central / "datalist.json").read_text())
    return {name: _write(header, entries + test, out / name) for name, entries in cohorts.items()}
