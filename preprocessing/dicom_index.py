"""Find DCE-MRI studies in a DICOM tree from their tags (never from file or folder names).

Headers are read without pixel data. Files are grouped patient -> visit -> phase, where a phase
is one (series, temporal position) pair, so both layouts occur: all phases in one series told
apart by TemporalPositionIdentifier, or one series per phase.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

PATIENT_KEY_TAGS = ("ClinicalTrialSubjectID", "PatientID")
HEADER_TAGS = [
    "ClinicalTrialSubjectID", "PatientID", "ClinicalTrialTimePointID", "ClinicalTrialSiteID",
    "StudyInstanceUID", "StudyDate", "SeriesInstanceUID", "TemporalPositionIdentifier", "TriggerTime",
    "AcquisitionTime", "ContrastBolusStartTime", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "RescaleSlope", "RescaleIntercept",
]
EARLY_S, LATE_S = 150.0, 450.0  # I-SPY early and late post-contrast times


@dataclass
class SliceHeader:
    path: str
    position: tuple[float, ...]
    orientation: tuple[float, ...]
    spacing: tuple[float, ...]
    shape: tuple[int, int]
    rescale: tuple[float, float] = (1.0, 0.0)  # RescaleSlope, RescaleIntercept


@dataclass
class Phase:
    """One dynamic phase: its slices and its time after contrast injection (None if unknown)."""

    key: tuple
    slices: list[SliceHeader] = field(default_factory=list)
    time_s: float | None = None
    temporal_position: int | None = None


@dataclass
class Visit:
    patient: str
    visit: str
    site: str | None
    study_date: str
    phases: dict[tuple, Phase] = field(default_factory=dict)


def _seconds(clock: str) -> float:
    clock = str(clock).strip()
    t = dt.datetime.strptime(clock.split(".")[0].ljust(6, "0"), "%H%M%S")
    fraction = float("0." + clock.split(".")[1]) if "." in clock else 0.0
    return t.hour * 3600 + t.minute * 60 + t.second + fraction


def phase_time(tags: dict) -> float | None:
    """Seconds after injection: AcquisitionTime - ContrastBolusStartTime, else TriggerTime (ms)."""
    if tags.get("AcquisitionTime") and tags.get("ContrastBolusStartTime"):
        return _seconds(tags["AcquisitionTime"]) - _seconds(tags["ContrastBolusStartTime"])
    if tags.get("TriggerTime") not in (None, ""):
        return float(tags["TriggerTime"]) / 1000.0
    return None


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def read_header(path: Path, patient_tag: str | None = None) -> dict:
    """Header fields of one file, or raise ``InvalidDicomError``/``OSError`` for unreadable files."""
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=HEADER_TAGS + ([patient_tag] if patient_tag else []))
    tags = {element.keyword: element.value for element in ds}  # convert each value once
    if not tags.get("SeriesInstanceUID") or not tags.get("ImagePositionPatient"):
        raise InvalidDicomError("not an image file (no series or position)")
    keys = (patient_tag,) if patient_tag else PATIENT_KEY_TAGS
    patient = next((_text(tags[k]) for k in keys if _text(tags.get(k))), None)
    if patient is None:
        raise InvalidDicomError(f"no patient key ({' or '.join(keys)})")
    slope, intercept = tags.get("RescaleSlope"), tags.get("RescaleIntercept")
    return {
        "path": str(path),
        "patient": patient,
        "visit": _text(tags.get("ClinicalTrialTimePointID")),
        "site": _text(tags.get("ClinicalTrialSiteID")) or None,
        "study": _text(tags.get("StudyInstanceUID")),
        "study_date": _text(tags.get("StudyDate")),
        "series": _text(tags["SeriesInstanceUID"]),
        "temporal_position": int(tags["TemporalPositionIdentifier"]) if tags.get("TemporalPositionIdentifier") else None,
        "time_s": phase_time(tags),
        "position": tuple(float(v) for v in tags["ImagePositionPatient"]),
        "orientation": tuple(round(float(v), 4) for v in tags.get("ImageOrientationPatient") or []),
        "spacing": tuple(float(v) for v in tags.get("PixelSpacing") or []),
        "shape": (int(tags.get("Rows") or 0), int(tags.get("Columns") or 0)),
        "rescale": (float(1 if slope in (None, "") else slope), float(0 if intercept in (None, "") else intercept)),
    }


def scan_headers(paths: list[Path], patient_tag: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Headers of readable files and (path, reason) for every file that is not a DICOM image."""
    headers, skipped = [], []
    for path in paths:
        try:
            headers.append(read_header(path, patient_tag))
        except (InvalidDicomError, OSError, ValueError, AttributeError, TypeError) as err:
            skipped.append((str(path), f"{type(err).__name__}: {err}".splitlines()[0][:200]))
    return headers, skipped


def group_visits(headers: list[dict]) -> dict[str, dict[str, Visit]]:
    """patient -> visit -> phases. Visits without ClinicalTrialTimePointID are named T0, T1, ...
    in study-date order."""
    studies: dict[tuple[str, str], Visit] = {}
    for h in headers:
        visit = studies.setdefault((h["patient"], h["study"]),
                                   Visit(h["patient"], h["visit"], h["site"], h["study_date"]))
        key = (h["series"], h["temporal_position"])
        phase = visit.phases.setdefault(key, Phase(key, temporal_position=h["temporal_position"]))
        if h["time_s"] is not None:  # slices of one phase may carry their own acquisition times
            phase.time_s = h["time_s"] if phase.time_s is None else min(phase.time_s, h["time_s"])
        phase.slices.append(SliceHeader(h["path"], h["position"], h["orientation"], h["spacing"], h["shape"],
                                        h["rescale"]))
    patients: dict[str, dict[str, Visit]] = defaultdict(dict)
    by_patient = defaultdict(list)
    for (patient, _), visit in studies.items():
        by_patient[patient].append(visit)
    for patient, visits in by_patient.items():
        visits.sort(key=lambda v: v.study_date)
        for k, visit in enumerate(visits):
            visit.visit = visit.visit or f"T{k}"
            if visit.visit in patients[patient]:  # two studies claim one visit: keep both phases apart
                patients[patient][visit.visit].phases.update(visit.phases)
            else:
                patients[patient][visit.visit] = visit
    return dict(patients)


def order_phases(phases: list[Phase]) -> list[Phase]:
    """Phases in acquisition order: by time after injection, else by temporal position."""
    if all(p.time_s is not None for p in phases):
        return sorted(phases, key=lambda p: p.time_s)
    if all(p.temporal_position is not None for p in phases):
        return sorted(phases, key=lambda p: p.temporal_position)
    raise ValueError("phases have neither timing tags nor TemporalPositionIdentifier")


def select_phases(phases: list[Phase], early_s: float = EARLY_S, late_s: float = LATE_S):
    """(pre-contrast, early, late) phases and how they were chosen.

    With timing tags: the pre-contrast phase is the first one; early and late are the
    post-contrast phases whose times are closest to ``early_s`` and ``late_s``. Without timing
    (fallback by index): first phase, first post-contrast phase and last phase.
    """
    ordered = order_phases(phases)
    if len(ordered) < 3:
        raise ValueError(f"{len(ordered)} dynamic phase(s); need a pre-contrast and two post-contrast")
    pre, post = ordered[0], ordered[1:]
    if all(p.time_s is not None for p in ordered):
        early = min(post, key=lambda p: abs(p.time_s - early_s))
        late = min(post, key=lambda p: abs(p.time_s - late_s))
        if early is late:
            raise ValueError("early and late phases coincide; timing tags cover too short a window")
        return pre, early, late, "timing"
    return pre, post[0], post[-1], "index"
