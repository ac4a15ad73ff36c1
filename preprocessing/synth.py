"""``python -m preprocessing synth``: a synthetic I-SPY2-like cohort in raw form.

Writes ``RAW/dicom/`` (DCE-MRI series per patient and visit, real DICOM MR files with fake PHI,
and for most patients a pre-treatment mammography study: ``synth_mammo``),
``RAW/clinical.csv`` (Table 1 fields, pCR, then the MRP model's rhpc variables) and ``RAW/truth.csv``
(latent response, image quantities, the mammographic margin score ``y_MG``, oracle probabilities
and the phantom's tumour volume per visit; never read by a model). Sites differ in scanner gain, noise, orientation, resolution, timing tags, phase
layout and case mix.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from .atomic import atomic_write_csv
from .cohort import VISIT_WEEKS, VISITS, sample_cohort
from .dicom_writing import dicom_uid, new_dataset, opaque_name
from .parallel import parallel_map
from .phantom import FOV_MM, Anatomy, render_phases
from .synth_mammo import MAMMOGRAPHY_SHARE, plan_mammography, write_mammograms

SURNAMES = ("ALVAREZ", "BROWN", "CHEN", "DUBOIS", "EKWUEME", "FISCHER", "GARCIA", "HOLM", "IVANOVA")
GIVEN_NAMES = ("ANNA", "BEATRIZ", "CLAIRE", "DANA", "ELIF", "FATIMA", "GRACE", "HANA", "INES")


@dataclass(frozen=True)
class Scanner:
    """Acquisition protocol of a site."""

    orientation: str  # "axial" or "sagittal"
    pixel_mm: float
    slice_mm: float
    n_post: int  # post-contrast phases
    phase_interval_s: float
    timing: str  # "trigger": TriggerTime; "clock": AcquisitionTime and ContrastBolusStartTime; "both"
    one_series_per_phase: bool
    rescale: tuple[float, float]  # (slope, intercept) of stored values
    gain: float
    noise_sd: float
    descending_slices: bool
    manufacturer: str


SCANNERS = (
    Scanner("axial", 2.5, 4.0, 5, 90.0, "trigger", False, (1.0, 0.0), 1.0, 6.0, False, "GE MEDICAL SYSTEMS"),
    Scanner("sagittal", 2.0, 5.0, 6, 75.0, "clock", True, (1.5, -100.0), 1.3, 10.0, False, "Philips"),
    Scanner("axial", 2.2, 5.0, 5, 100.0, "both", False, (1.0, 0.0), 0.8, 8.0, True, "SIEMENS"),
)
FULL_RESOLUTION = {"pixel_mm": 1 / 3, "slice_mm": 1 / 2.5}  # multipliers for --resolution full
# MRI visits per patient under --visits realistic, per site template: an I-SPY-like site images
# nearly everyone at every visit; others miss mid- or post-treatment scans (the MRP cohorts)
VISIT_SUBSETS = (
    {("T0", "T1", "T2", "T3"): 0.85, ("T0", "T1", "T2"): 0.10, ("T0",): 0.05},
    {("T0", "T1", "T2", "T3"): 0.60, ("T0", "T1", "T2"): 0.10, ("T0", "T3"): 0.20, ("T0",): 0.10},
    {("T0", "T1", "T2", "T3"): 0.70, ("T0", "T1", "T3"): 0.10, ("T0", "T3"): 0.15, ("T0",): 0.05},
)


def site_scanner(k: int, resolution: str, rng: np.random.Generator) -> Scanner:
    """Scanner of site ``k``: the templates in turn, jittered beyond the first three sites."""
    scanner = SCANNERS[k % len(SCANNERS)]
    if k >= len(SCANNERS):
        scanner = replace(scanner, gain=scanner.gain * rng.uniform(0.8, 1.2),
                          noise_sd=scanner.noise_sd * rng.uniform(0.8, 1.3),
                          pixel_mm=scanner.pixel_mm * rng.uniform(0.9, 1.1))
    if resolution == "full":
        scanner = replace(scanner, pixel_mm=scanner.pixel_mm * FULL_RESOLUTION["pixel_mm"],
                          slice_mm=scanner.slice_mm * FULL_RESOLUTION["slice_mm"])
    return scanner


def acquisition_grid(scanner: Scanner):
    """Slice positions and voxel centres (slices, rows, cols, 3) of a scan covering the FOV."""
    return field_grid(scanner.orientation, scanner.pixel_mm, scanner.slice_mm, FOV_MM)


def field_grid(orientation: str, pixel_mm: float, slice_mm: float, fov: np.ndarray):
    """Voxel centres (slices, rows, cols, 3), slice positions and ImageOrientationPatient of an
    ``axial`` or sagittal acquisition covering ``fov`` (x, y, z extent in mm)."""
    if orientation == "axial":
        row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    else:
        row_dir, col_dir = np.array([0, 1.0, 0]), np.array([0, 0, -1.0])
    normal = np.cross(row_dir, col_dir)
    extent = fov[:, 1] - fov[:, 0]
    n_cols = int(np.ceil(abs(row_dir @ extent) / pixel_mm))
    n_rows = int(np.ceil(abs(col_dir @ extent) / pixel_mm))
    n_slices = int(np.ceil(abs(normal @ extent) / slice_mm))
    # the corner voxel sits at the FOV end each axis starts from
    start = np.where(row_dir + col_dir + normal > 0, fov[:, 0], fov[:, 1])
    corner = start + (row_dir + col_dir) * pixel_mm / 2 + normal * slice_mm / 2
    k, i, j = np.meshgrid(np.arange(n_slices), np.arange(n_rows), np.arange(n_cols), indexing="ij")
    points = (corner + k[..., None] * slice_mm * normal + i[..., None] * pixel_mm * col_dir
              + j[..., None] * pixel_mm * row_dir)
    positions = corner + np.arange(n_slices)[:, None] * slice_mm * normal
    return points, positions, np.concatenate([row_dir, col_dir])


def _clock(seconds: float) -> str:
    seconds = seconds % 86400
    return f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"


def patient_anatomy(job: dict) -> tuple[Anatomy, np.ndarray, np.random.Generator]:
    """Anatomy, per-visit positioning shifts (mm) and the generator for the rest of a patient."""
    rng = np.random.default_rng(job["seed"])
    anatomy = Anatomy.sample(job["patient"]["y_T0"], rng)
    shifts = rng.uniform(-4, 4, size=(len(VISITS), 3))  # patient positioning differs between visits
    return anatomy, shifts, rng


def write_patient(job: dict) -> int:
    """Render and write all visits of one patient; returns the number of files written."""
    # the generator's own values are valid by construction; per-element validation is slow
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    patient, scanner, out = job["patient"], job["scanner"], Path(job["out"])
    anatomy, shifts, rng = patient_anatomy(job)
    cumulative = np.cumsum([0.0, patient["y_T1"], patient["y_T2"], patient["y_T3"]])
    baseline_date = dt.date(2011, 1, 3) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    phi = {
        "PatientName": f"{SURNAMES[rng.integers(len(SURNAMES))]}^{GIVEN_NAMES[rng.integers(len(GIVEN_NAMES))]}",
        "PatientID": f"MRN{rng.integers(10**6, 10**7)}",
        "PatientBirthDate": (baseline_date - dt.timedelta(days=int(patient["age"] * 365.25))).strftime("%Y%m%d"),
    }
    n_files = 0
    patient_dir = out / patient["site"] / opaque_name(job["seed"], "patient")
    points, positions, orientation = acquisition_grid(scanner)
    for v, visit in enumerate(VISITS):
        times = [-30.0] + [scanner.phase_interval_s * (p + 0.5) + 20 for p in range(scanner.n_post)]
        # the scanner's field stays put; the patient lies shifted by shifts[v]
        phases = render_phases(anatomy, points - shifts[v], scanner.pixel_mm, cumulative[v], times,
                               scanner.gain, scanner.noise_sd, rng)
        date = baseline_date + dt.timedelta(weeks=VISIT_WEEKS[v], days=int(rng.integers(-3, 4)))
        bolus_clock = 9 * 3600 + float(rng.uniform(0, 7 * 3600))
        study = {
            **phi,
            "AccessionNumber": f"{rng.integers(10**8, 10**9)}",
            "StudyInstanceUID": dicom_uid(job["seed"], visit),
            "StudyDate": date.strftime("%Y%m%d"),
            "ClinicalTrialTimePointID": visit,
            "ClinicalTrialSubjectID": patient["id"],
            "ClinicalTrialSiteID": patient["site"],
            "FrameOfReferenceUID": dicom_uid(job["seed"], visit, "frame"),
        }
        study_dir = patient_dir / opaque_name(job["seed"], visit)
        slice_order = rng.permutation(len(positions))  # file numbering unrelated to position
        if visit not in job["visits"]:  # not imaged: rendered all the same, so later visits do not change
            continue
        for p, (t, volume) in enumerate(zip(times, phases)):
            series_key = p if scanner.one_series_per_phase else 0
            series = {
                "SeriesInstanceUID": dicom_uid(job["seed"], visit, "series", series_key),
                "SeriesNumber": 1000 + series_key,
                "SeriesDescription": f"DCE {'phase ' + str(p) if scanner.one_series_per_phase else 'dynamic'}",
            }
            series_dir = study_dir / opaque_name(job["seed"], visit, series_key)
            series_dir.mkdir(parents=True, exist_ok=True)
            ds = _series_dataset(scanner, study, series, orientation, p, len(times), t, bolus_clock,
                                 volume.shape[1:])
            slope, intercept = scanner.rescale
            stored = np.clip(np.round((volume - intercept) / slope), 0, 65535).astype(np.uint16)
            for k in range(len(positions)):
                # one header per series; only the per-slice elements change
                ds.ImagePositionPatient = [round(float(c), 4) for c in positions[k]]
                ds.InstanceNumber = p * 1000 + k + 1
                ds.SOPInstanceUID = dicom_uid(job["seed"], visit, p, k)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.PixelData = stored[k].tobytes()
                number = slice_order[k] + 1 + p * len(positions)
                ds.save_as(series_dir / f"IM{number:05d}.dcm", enforce_file_format=True)
                n_files += 1
    return n_files + write_mammograms(job, anatomy, phi, baseline_date, patient_dir)


def _series_dataset(scanner: Scanner, study: dict, series: dict, orientation, phase: int,
                    n_phases: int, t: float, bolus_clock: float, shape) -> Dataset:
    """Header shared by all slices of one phase."""
    ds = new_dataset(MRImageStorage)
    ds.Modality = "MR"
    ds.Manufacturer = scanner.manufacturer
    ds.MagneticFieldStrength = 1.5
    ds.ScanningSequence = "GR"
    ds.ContrastBolusAgent = "Gd"
    for key, value in {**study, **series}.items():
        setattr(ds, key, value)
    if not scanner.one_series_per_phase:
        ds.TemporalPositionIdentifier = phase + 1
        ds.NumberOfTemporalPositions = n_phases
    if scanner.timing in ("trigger", "both"):
        ds.TriggerTime = round(max(t, 0.0) * 1000, 1)
    if scanner.timing in ("clock", "both"):
        ds.ContrastBolusStartTime = _clock(bolus_clock)
        ds.AcquisitionTime = _clock(bolus_clock + t)
        ds.SeriesTime = ds.AcquisitionTime
    ds.ImageOrientationPatient = [float(c) for c in orientation]
    ds.PixelSpacing = [scanner.pixel_mm, scanner.pixel_mm]
    ds.SliceThickness = scanner.slice_mm
    ds.SpacingBetweenSlices = scanner.slice_mm
    slope, intercept = scanner.rescale
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def visit_subsets(sites: list[str], seed: int) -> list[tuple[str, ...]]:
    """The MRI visits each patient has under ``--visits realistic``: the patterns of VISIT_SUBSETS
    with the probabilities of the patient's site (the templates in turn), from their own stream."""
    rng = np.random.default_rng([seed, 4])
    order = sorted(set(sites))
    chosen = []
    for site in sites:
        patterns, p = zip(*VISIT_SUBSETS[order.index(site) % len(VISIT_SUBSETS)].items())
        chosen.append(patterns[rng.choice(len(patterns), p=p)])
    return chosen


def patient_jobs(out: Path, patients: int, sites: int, seed: int, resolution: str, visits: str = "all"):
    """Clinical table, truth table and one rendering job per patient (deterministic in ``seed``);
    ``visits``: "all" (every patient has T0-T3) or "realistic" (``visit_subsets``)."""
    clinical, truth, site_list = sample_cohort(patients, sites, seed)
    rng = np.random.default_rng([seed, 1])
    scanners = {s["site"]: site_scanner(k, resolution, rng) for k, s in enumerate(site_list)}
    seeds = np.random.SeedSequence([seed, 2]).spawn(patients)
    records = clinical.merge(truth, on="id").to_dict("records")
    subsets = (visit_subsets(list(clinical["site"]), seed) if visits == "realistic"
               else [VISITS] * patients)
    truth["visits"] = [",".join(v) for v in subsets]
    jobs = [{"patient": rec, "scanner": scanners[rec["site"]], "out": str(Path(out) / "dicom"),
             "seed": int(s.generate_state(1)[0]), "visits": v} for rec, s, v in zip(records, seeds, subsets)]
    # the phantom's tumour volume per visit, to check the FTV against
    volumes = np.array([[patient_anatomy(job)[0].tumour_volume_ml] for job in jobs]) * np.exp(
        np.cumsum(np.c_[np.zeros(len(jobs)), truth[[f"y_{v}" for v in VISITS[1:]]].to_numpy()], axis=1))
    for k, visit in enumerate(VISITS):
        truth[f"tumour_ml_{visit}"] = volumes[:, k].round(4)
    return clinical, truth, jobs


def synthesize(out: Path, patients: int = 240, sites: int = 3, seed: int = 0, workers: int = 1,
               resolution: str = "demo", mammography_share: float = MAMMOGRAPHY_SHARE, visits: str = "all") -> dict:
    """Write a synthetic raw cohort to ``out``; returns a short summary. A ``mammography_share``
    of the patients also has pre-treatment mammograms (none at the last site: ``synth_mammo``);
    ``visits`` "realistic" gives each patient a subset of the MRI visits (``visit_subsets``)."""
    out = Path(out)
    clinical, truth, jobs = patient_jobs(out, patients, sites, seed, resolution, visits)
    plan_mammography(jobs, sites, mammography_share, resolution)
    out.mkdir(parents=True, exist_ok=True)
    n_files = sum(parallel_map(write_patient, jobs, workers, "synth", "patient"))
    # the tables are written last, so a cohort with a clinical.csv is complete
    atomic_write_csv(truth, out / "truth.csv")
    atomic_write_csv(clinical, out / "clinical.csv")
    return {"patients": patients, "sites": sites, "files": n_files, "pCR rate": round(clinical["pCR"].mean(), 3)}
