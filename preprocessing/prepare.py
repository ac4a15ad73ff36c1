"""``python -m preprocessing prepare``: raw DICOM cohort + clinical table -> prepared cohort.

Outputs (``DESIGN.md``, prepared cohort): ``images/<id>/<visit>.nii.gz`` with channels early PE,
late PE, FTV mask, SER and the subtraction image (first post-contrast minus pre-contrast signal)
on an isotropic grid centred on the tumour; a sidecar ``images/<id>/<visit>.json`` (FTV in mL,
phase selection); mammograms as ``images/<id>/mg_<L|R>_<CC|MLO>.nii.gz`` (``mammography``);
``datalist.json``; ``exclusions.csv``.
Every file is written atomically; a rerun with the same options skips finished visits.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from .atomic import (
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    remove_stale_temporaries,
)
from .clinical import pseudonym, read_clinical
from .dicom_index import (
    EARLY_S,
    LATE_S,
    DicomRules,
    PhaseError,
    Visit,
    acquisition_order,
    group_visits,
    scan_headers,
    select_phases,
)
from .kinetics import (
    BACKGROUND_FRACTION,
    MIN_COMPONENT_ML,
    PE_THRESHOLD,
    kinetic_maps,
    largest_component_centroid,
)
from .mammography import MG_SIZE, add_mammograms
from .parallel import parallel_map
from .schema import Schema, preset
from .seg import FTV_SOURCES, AnalysisMaskError, analysis_mask_ftv
from .volume import GeometryError, ras_affine, read_phase, resample_around

log = logging.getLogger("preprocessing")
CHANNELS = ("pe_early", "pe_late", "ftv_mask", "ser", "subtraction")
N_FOLDS = 5


class PrepareError(RuntimeError):
    """Fatal problem with the input as a whole."""


@dataclass(frozen=True)
class Options:
    size: int = 32
    spacing: float = 2.0
    required_visits: tuple[str, ...] = ("T0", "T1", "T2")
    early_s: float = EARLY_S
    late_s: float = LATE_S
    pe_threshold: float = PE_THRESHOLD
    background_fraction: float = BACKGROUND_FRACTION
    min_component_ml: float = MIN_COMPONENT_ML
    ftv_source: str = "pe"  # "pe": the FTV rule on the kinetic maps; "seg": the study's Analysis Mask

    def __post_init__(self):
        if self.ftv_source not in FTV_SOURCES:
            raise ValueError(f"ftv_source must be one of {', '.join(FTV_SOURCES)}")


def _init_worker():
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # parallelism comes from --workers


def _jsonable(value):
    return json.loads(json.dumps(value))


def process_visit(visit: Visit, out_stem: Path, options: Options, fallback_centre) -> dict:
    """Kinetic maps, FTV and resampled NIfTI of one visit; returns its sidecar record."""
    sidecar = out_stem.with_suffix(".json")
    if sidecar.exists():
        record = json.loads(sidecar.read_text())
        if (record.get("options") == _jsonable(asdict(options)) and record.get("channels") == list(CHANNELS)
                and out_stem.with_suffix(".nii.gz").exists()):
            return record
    phases = list(visit.phases.values())
    pre, early, late, selection = select_phases(phases, options.early_s, options.late_s)
    first = acquisition_order(phases)[1]  # for the MRP model's subtraction image
    (s0, geometry), (s1, g1), (s2, g2) = (read_phase(p) for p in (pre, early, late))
    s_first, g_first = (s1, g1) if first is early else read_phase(first)
    if not (geometry.same_as(g1) and geometry.same_as(g2) and geometry.same_as(g_first)):
        raise GeometryError("geometry mismatch between phases")
    maps = kinetic_maps(s0, s1, s2, geometry.voxel_ml, options.background_fraction,
                        options.pe_threshold, options.min_component_ml, geometry.direction, geometry.spacing)
    ftv, ftv_ml, ftv_source = maps.ftv_mask, maps.ftv_ml, "pe"
    if options.ftv_source == "seg":
        from_seg = analysis_mask_ftv(visit.segs, geometry)
        ftv, ftv_ml, ftv_source = (*from_seg, "seg") if from_seg else (ftv, ftv_ml, "pe (no Analysis Mask)")
    centroid = largest_component_centroid(ftv)
    if centroid is not None:
        centre, centre_from = geometry.to_physical(centroid), "ftv"
    elif fallback_centre is not None:
        centre, centre_from = np.asarray(fallback_centre), "earlier visit ftv"
    else:
        centre, centre_from = geometry.to_physical((np.array(geometry.shape) - 1) / 2), "volume centre"
    subtraction = s_first - s0
    channels = [resample_around(a, geometry, centre, options.size, options.spacing, nearest=(name == "ftv_mask"))
                for name, a in zip(CHANNELS, (maps.pe_early, maps.pe_late, ftv, maps.ser, subtraction))]
    image = nib.Nifti1Image(np.stack(channels, axis=-1).astype(np.float32),
                            ras_affine(centre, options.size, options.spacing))
    with atomic_path(out_stem.with_suffix(".nii.gz")) as tmp:
        nib.save(image, tmp)
    record = {
        "ftv_ml": round(ftv_ml, 3),
        "ftv_source": ftv_source,
        "chest_wall_found": maps.chest_wall_found,
        "centre_mm": [round(float(c), 2) for c in centre],
        "centre_from": centre_from,
        "phase_selection": selection,
        "phase_times_s": [None if p.time_s is None else round(p.time_s, 1) for p in (pre, early, late)],
        "n_phases": len(visit.phases),
        "channels": list(CHANNELS),
        "options": asdict(options),
    }
    atomic_write_json(record, sidecar)
    return record


def process_patient(job: dict) -> dict:
    """All visits of one patient; failures of single visits become exclusion reasons."""
    results, reasons, centre = {}, {}, None
    for name, visit in sorted(job["visits"].items(), key=lambda kv: (kv[0] not in job["required"], kv[0])):
        try:
            record = process_visit(visit, Path(job["out_dir"]) / name, job["options"], centre)
        except GeometryError as err:
            reasons[name] = f"geometry: {err}"
            continue
        except (PhaseError, AnalysisMaskError) as err:  # this project's own one-line messages
            reasons[name] = str(err)
            continue
        except Exception as err:  # one bad study must not stop the cohort; its text may hold paths or tags
            reasons[name] = f"unreadable or incomplete study ({type(err).__name__})"
            continue
        results[name] = record
        if centre is None and record["centre_from"] == "ftv":
            centre = record["centre_mm"]
    return {"id": job["id"], "results": results, "reasons": reasons}


def _scan_chunk(args):
    return scan_headers(*args)


def discover(raw: Path, workers: int, rules: DicomRules, clinical: Path | None = None):
    """Headers of every DICOM object under ``raw/dicom`` (or ``raw``), and why each other file was
    skipped (the clinical table and ``truth.csv`` are not scanned)."""
    root = raw / "dicom" if (raw / "dicom").is_dir() else raw
    tables = {Path(clinical).resolve()} if clinical else set()
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("clinical.csv", "truth.csv")
                   and p.resolve() not in tables)
    if not paths:
        raise PrepareError(f"no files under {root}")
    chunks = [(paths[i:i + 500], rules) for i in range(0, len(paths), 500)]
    headers, skipped = [], []
    for h, s in parallel_map(_scan_chunk, chunks, workers, "scan", "chunk", _init_worker):
        headers += h
        skipped += s
    if not headers:
        raise PrepareError(f"no DICOM images under {root} ({len(skipped)} other files)")
    return headers, [why for _, why in skipped]


def assign_folds(ids: list[str], labels: list[int], sites: list[str], seed: int) -> dict[str, int]:
    """Stratified patient-level folds: by pCR x site where every stratum allows it, else by pCR."""
    strata = [f"{label}|{site}" for label, site in zip(labels, sites)]
    if min(pd.Series(strata).value_counts()) < N_FOLDS:
        strata = [str(label) for label in labels]
    if min(pd.Series(strata).value_counts()) < N_FOLDS:  # tiny cohorts: deal each class round-robin
        order = np.random.default_rng(seed).permutation(len(ids))
        order = sorted(order, key=lambda i: strata[i])
        return {ids[i]: k % N_FOLDS for k, i in enumerate(order)}
    folds = {}
    splitter = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(ids)), strata)):
        folds.update({ids[i]: k for i in test})
    return folds


def dicom_rules(schema: Schema, patient_tag: str | None = None) -> DicomRules:
    """The schema's ``dicom`` section as discovery rules; ``patient_tag`` overrides its tag."""
    spec = dict(schema.dicom)
    unknown = set(spec) - set(DicomRules.__dataclass_fields__)
    if unknown:
        raise PrepareError(f"schema {schema.name}: unknown dicom key(s) {', '.join(sorted(unknown))}")
    return DicomRules(**{**spec, **({"patient_tag": patient_tag} if patient_tag else {})})


def pseudonym_salt(out: Path, create: bool = True) -> str:
    """``$PCR_PSEUDONYM_SALT``, else a random key kept in ``<out>.pseudonym-key`` beside (never
    inside) the prepared folder, created once (``create``) so that reruns give the same pseudonyms."""
    if os.environ.get("PCR_PSEUDONYM_SALT"):
        return os.environ["PCR_PSEUDONYM_SALT"]
    out = Path(out)
    key = out.parent / f"{out.name}.pseudonym-key"
    if not key.exists() and not create:
        raise PrepareError(f"{key} not found: the pseudonym key (or $PCR_PSEUDONYM_SALT) of {out} is needed")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(key) as tmp:
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
        log.warning("pseudonym key written to %s: keep it at the site, it links pseudonyms to study ids", key)
    return key.read_text().strip()


def prepare(raw: Path, out: Path, options: Options = Options(), workers: int = 1, seed: int = 0, *,
            schema: Schema | None = None, clinical: Path | None = None, pseudonymize: bool | None = None,
            salt: str | None = None, patient_tag: str | None = None, mg_size: tuple[int, int] = MG_SIZE) -> dict:
    """Prepare a cohort; returns the datalist. Raises ``PrepareError`` on fatal input problems.

    ``schema`` (default: the ``synthetic`` preset) maps the clinical table onto the model fields
    and says how DICOM studies are found; ``clinical`` is the table (default: the schema's
    ``table`` under ``raw``). Ids are pseudonymised (``P`` + salted SHA-256) when
    ``pseudonymize`` is true, or when it is None and a patient key comes from PatientID (a record
    number); ``salt`` defaults to ``pseudonym_salt(out)``. ``mg_size`` is the (rows, columns) of the
    prepared mammograms."""
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise PrepareError(f"raw cohort folder not found: {raw}")
    try:
        schema = schema or preset("synthetic")
        if clinical is None and not schema.table:
            raise PrepareError(f"schema {schema.name} names no default table: give the clinical table (--clinical)")
        clinical = Path(clinical) if clinical is not None else raw / schema.table
        patients, exclusions, warnings = read_clinical(clinical, schema)
    except ValueError as err:
        raise PrepareError(str(err)) from None
    for w in warnings:
        log.warning(w)
    rules = dicom_rules(schema, patient_tag)
    headers, skipped = discover(raw, workers, rules, clinical)
    if skipped:
        log.warning("%d file(s) under %s are not DICOM objects and were skipped (counted in exclusions.csv)",
                    len(skipped), raw)
    # counted by kind: file names and exception texts may carry patient names or tag values
    exclusions += [{"id": "-", "visit": "-", "reason": f"not a DICOM object ({kind}): {n} file(s)"}
                   for kind, n in sorted(Counter(why.split(":")[0] for why in skipped).items())]
    studies, skipped_series = group_visits(headers, rules)
    if pseudonymize is None:
        pseudonymize = any(h["key_tag"] == "PatientID" for h in headers)
    if pseudonymize and salt is None:
        salt = pseudonym_salt(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out)
    if stale:
        log.warning("removed %d temporary file(s) left by an interrupted run", stale)

    def public_id(pid: str) -> str:
        return pseudonym(pid, salt) if pseudonymize else pid

    listed = {e["id"] for e in exclusions} - {"-"}  # table rows excluded with their reason
    exclusions = [dict(e, id=public_id(e["id"])) if e["id"] != "-" else e for e in exclusions]
    run_salt = secrets.token_hex(16)
    # series that are not the DCE (SEG, maps, localizers, ...) cost no patient: counted over the
    # cohort; studies or visits that are lost are listed per patient
    routine = Counter()
    for key, visit, reason, count in skipped_series:  # raw DICOM keys: a digest unless the table knows them
        if reason.startswith("skipped series:"):
            routine[reason] += count
            continue
        pid = "-" if key == "-" else public_id(key) if key in patients or key in listed else pseudonym(key, run_salt)
        exclusions.append({"id": pid, "visit": visit, "reason": f"{reason} (x{count})" if count > 1 else reason})
    exclusions += [{"id": "-", "visit": "-", "reason": f"{kind} (x{n})"} for kind, n in sorted(routine.items())]
    for key in sorted(set(studies) - set(patients) - listed):
        # the DICOM key may be a record number: never write it, only a digest with a secret
        # per-run salt (a fixed salt would let anyone test guessed record numbers)
        exclusions.append({"id": pseudonym(key, run_salt), "visit": "-",
                           "reason": "DICOM patient has no valid row in the clinical table (id shown as digest)"})
    jobs = []
    for pid in sorted(patients):
        if pid not in studies:
            exclusions.append({"id": public_id(pid), "visit": "-", "reason": "no DICOM study found"})
            continue
        missing = [v for v in options.required_visits if v not in studies[pid]]
        if missing:
            exclusions.append({"id": public_id(pid), "visit": ",".join(missing),
                               "reason": f"missing visit(s) {', '.join(missing)}"})
            continue
        jobs.append({"id": pid, "visits": studies[pid], "required": options.required_visits,
                     "out_dir": str(out / "images" / public_id(pid)), "options": options})

    entries = []
    for result in parallel_map(process_patient, jobs, workers, "prepare", "patient", _init_worker):
        pid, results, reasons = result["id"], result["results"], result["reasons"]
        for visit, reason in reasons.items():
            exclusions.append({"id": public_id(pid), "visit": visit, "reason": reason})
        failed = [v for v in options.required_visits if v in reasons]
        if failed or not results:  # (with no required visit, at least one must work)
            exclusions.append({"id": public_id(pid), "visit": ",".join(failed or sorted(reasons)),
                               "reason": f"required visit(s) {', '.join(failed)} could not be processed" if failed
                               else "no visit could be processed"})
            continue
        site = patients[pid]["site"] or studies[pid][min(results)].site or "unknown"
        entry = {"id": public_id(pid), "site": str(site), "label": patients[pid]["label"]}
        entry |= {v: f"images/{public_id(pid)}/{v}.nii.gz" for v in sorted(results)}
        entry["ftv_ml"] = {v: results[v]["ftv_ml"] for v in sorted(results)}
        if options.ftv_source != "pe":  # which rule gave each visit's FTV (a visit may lack the mask)
            entry["ftv_source"] = {v: results[v]["ftv_source"] for v in sorted(results)}
        entry["clinical"] = patients[pid]["clinical"]
        entries.append(entry)
    first_mri = {pid: min(v.study_date for v in visits.values()) for pid, visits in studies.items()}
    exclusions += add_mammograms(entries, headers, patients, public_id, rules, out, first_mri, mg_size, workers)
    fallbacks = sum(source != options.ftv_source for e in entries for source in e.get("ftv_source", {}).values())
    if fallbacks:
        log.warning("%d visit(s) had no Analysis Mask: their FTV is the PE rule's (ftv_source in datalist.json)",
                    fallbacks)
    atomic_write_csv(pd.DataFrame(exclusions, columns=["id", "visit", "reason"]), out / "exclusions.csv")
    if not entries:
        raise PrepareError(f"no patient could be prepared; reasons in {out / 'exclusions.csv'}")
    entries.sort(key=lambda e: e["id"])
    folds = assign_folds([e["id"] for e in entries], [e["label"] for e in entries],
                         [e["site"] for e in entries], seed)
    for e in entries:
        e["fold"] = folds[e["id"]]
    datalist = {
        "name": "pCR DCE-MRI prepared cohort",
        "description": "Per visit: early PE, late PE, FTV mask, SER, first post-contrast minus pre-contrast "
                       "signal (channels last in the NIfTI).",
        "channels": list(CHANNELS),
        "visits": sorted({v for e in entries for v in e["ftv_ml"]}),
        "required_visits": list(options.required_visits),
        "spacing_mm": options.spacing,
        "size": [options.size] * 3,
        "mammogram_size": list(mg_size),
        "num_folds": N_FOLDS,
        "fold_seed": seed,
        "pseudonymized": bool(pseudonymize),
        "schema": schema.name,
        "clinical_fields": schema.field_record(),
        "numTraining": len(entries),
        "training": entries,
    }
    atomic_write_json(datalist, out / "datalist.json")
    return datalist
