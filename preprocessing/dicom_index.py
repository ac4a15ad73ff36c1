"""Find DCE-MRI studies in a DICOM tree from their tags (never from file or folder names).

Headers are read without pixel data. Files are grouped patient -> study -> series; in each study
the original dynamic series is chosen (SEG, derived maps, localizers and other sequences are
skipped and counted) and split into phases, where a phase is one (series, temporal position)
pair, so both layouts occur: all phases in one series, or one series per phase. A multi-frame
(Enhanced MR) file contributes one image per frame.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    EnhancedMRImageStorage,
    MRImageStorage,
    SegmentationStorage,
)

PATIENT_KEY_TAGS = ("ClinicalTrialSubjectID", "PatientID")
HEADER_TAGS = [
    "ClinicalTrialSubjectID", "PatientID", "ClinicalTrialTimePointID", "ClinicalTrialSiteID",
    "StudyInstanceUID", "StudyDate", "StudyDescription", "SeriesInstanceUID", "SeriesNumber",
    "SeriesDescription", "SOPClassUID", "ImageType", "InstanceNumber", "TemporalPositionIdentifier",
    "TriggerTime", "AcquisitionTime", "ContentTime", "ContrastBolusStartTime", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "RescaleSlope", "RescaleIntercept",
    "NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
]
MR_STORAGE = (MRImageStorage, EnhancedMRImageStorage)
# prepared by mammography.py; never part of an MRI visit
MAMMOGRAPHY_STORAGE = (DigitalMammographyXRayImageStorageForPresentation, DigitalMammographyXRayImageStorageForProcessing)
EARLY_S, LATE_S = 150.0, 450.0  # I-SPY early and late post-contrast times
MIN_PHASES = 3  # a pre-contrast and two post-contrast phases
# Seconds after injection, tried in this order. TriggerTime means different things per vendor:
# GE writes the time from the start of the dynamic acquisition to the centre of k-space of that
# phase; Siemens and Philips often write 0 or the cardiac trigger delay. I-SPY2 (TCIA) has frozen
# AcquisitionTime/ContentTime, seconds apart across phases. So a source counts only where its
# times increase by at least MIN_STEP_S from phase to phase.
TIMING_SOURCES = ("TriggerTime", "AcquisitionTime", "ContentTime")
MIN_STEP_S = 5.0
# SeriesDescription patterns (re.search, case-insensitive) of series that are never the DCE:
# localizers, kinetic maps (PE2, SER), masks, subtractions, MIPs, T2w, diffusion
SERIES_EXCLUDE = (
    r"locali[sz]er|scout|survey",
    r"(?<![a-z])(pe\d|ser|mip|sub)(?![a-z])",  # "VOLSER" (I-SPY2's DCE) is no SER
    r"mask|subtract",
    r"(?<![a-z0-9])t2(?!\d)",
    r"(?<![a-z])(dwi|adc)(?![a-z])|diffusion",
)


class PhaseError(ValueError):
    """A study's dynamic phases cannot be used (the message names no tag value)."""


@dataclass(frozen=True)
class DicomRules:
    """How a collection names patients and visits and describes its DCE series."""

    patient_tag: str | None = None  # keyword; None: ClinicalTrialSubjectID, else PatientID
    patient_pattern: str | None = None  # re.fullmatch on the key; group 1 is the normalised key
    visit_pattern: str | None = None  # re.search on StudyDescription; group 1 is the visit name
    series_include: tuple[str, ...] = ()  # when non-empty, a DCE series description matches one
    series_exclude: tuple[str, ...] = ()  # never the DCE, beside SERIES_EXCLUDE
    site_tag: str | None = None  # keyword of the site where ClinicalTrialSiteID is absent
    site_pattern: str | None = None  # re.search on it; group 1 is the site (I-SPY2: PatientName "...^Site-7")


@dataclass
class SliceHeader:
    path: str
    position: tuple[float, ...]
    orientation: tuple[float, ...]
    spacing: tuple[float, ...]
    shape: tuple[int, int]
    rescale: tuple[float, float] = (1.0, 0.0)  # RescaleSlope, RescaleIntercept
    frame: int | None = None  # frame index in a multi-frame file


@dataclass
class Phase:
    """One dynamic phase: its slices and its times after contrast injection."""

    key: tuple
    slices: list[SliceHeader] = field(default_factory=list)
    time_s: float | None = None  # by the timing source select_phases chose (None: by index)
    temporal_position: int | None = None
    times: dict[str, float] = field(default_factory=dict)  # seconds per timing source
    series_number: int | None = None


@dataclass
class Visit:
    patient: str
    visit: str
    site: str | None
    study_date: str
    phases: dict[tuple, Phase] = field(default_factory=dict)
    segs: list[str] = field(default_factory=list)  # DICOM SEG files of the study


def _seconds(clock: str) -> float:
    clock = str(clock).strip()
    t = dt.datetime.strptime(clock.split(".")[0].ljust(6, "0"), "%H%M%S")
    fraction = float("0." + clock.split(".")[1]) if "." in clock else 0.0
    return t.hour * 3600 + t.minute * 60 + t.second + fraction


def phase_times(tags: dict) -> dict[str, float]:
    """Seconds after injection per timing source: TriggerTime (ms), AcquisitionTime and
    ContentTime relative to ContrastBolusStartTime; sources without values are left out."""
    times = {}
    if tags.get("TriggerTime") not in (None, ""):
        times["TriggerTime"] = float(tags["TriggerTime"]) / 1000.0
    if tags.get("ContrastBolusStartTime"):
        for source in ("AcquisitionTime", "ContentTime"):
            if tags.get(source):
                times[source] = _seconds(tags[source]) - _seconds(tags["ContrastBolusStartTime"])
    return times


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _values(value) -> list:
    """A multi-valued element's values (pydicom gives a single value as a plain value)."""
    return [] if value in (None, "") else [value] if isinstance(value, (str, bytes)) else list(value)


def _functional_group(tags: dict, frame: int, name: str):
    """Item of functional group ``name`` for one frame: per-frame, else shared (PS3.3 C.7.6.16)."""
    per_frame = tags.get("PerFrameFunctionalGroupsSequence") or []
    items = [per_frame[frame]] if frame < len(per_frame) else []
    items += list(tags.get("SharedFunctionalGroupsSequence") or [])
    return next((item[name].value[0] for item in items if name in item and item[name].value), {})


def _frame_tags(tags: dict, frame: int) -> dict:
    """A classic single-frame header for one frame of an Enhanced MR file."""
    def group(name):
        return _functional_group(tags, frame, name)

    content, rescale = group("FrameContentSequence"), group("PixelValueTransformationSequence")
    acquired = _text(content.get("FrameAcquisitionDateTime"))  # YYYYMMDDHHMMSS.FFFFFF&ZZXX
    offset = group("TemporalPositionSequence").get("TemporalPositionTimeOffset")  # s from the first phase
    return {
        "ImagePositionPatient": group("PlanePositionSequence").get("ImagePositionPatient"),
        "ImageOrientationPatient": group("PlaneOrientationSequence").get("ImageOrientationPatient"),
        "PixelSpacing": group("PixelMeasuresSequence").get("PixelSpacing"),
        "TemporalPositionIdentifier": content.get("TemporalPositionIndex"),
        "TriggerTime": None if offset is None else float(offset) * 1000.0,  # plays GE TriggerTime's role
        "AcquisitionTime": re.split(r"[+-]", acquired[8:])[0] if len(acquired) > 8 else None,
        "ContrastBolusStartTime": tags.get("ContrastBolusStartTime"),
        "RescaleSlope": rescale.get("RescaleSlope"), "RescaleIntercept": rescale.get("RescaleIntercept"),
        "InstanceNumber": tags.get("InstanceNumber"),
    }


def _image(tags: dict, frame: int | None) -> dict:
    """Geometry, temporal position and timing of one image (a file or a frame)."""
    if not tags.get("ImagePositionPatient"):
        where = "" if frame is None else f" (frame {frame})"
        raise InvalidDicomError(f"MR image without ImagePositionPatient{where}")
    slope, intercept = tags.get("RescaleSlope"), tags.get("RescaleIntercept")
    position = tags.get("TemporalPositionIdentifier")
    return {
        "frame": frame,
        "instance": int(tags.get("InstanceNumber") or 0),
        "temporal_position": int(position) if position not in (None, "") else None,
        "times": phase_times(tags),
        "acquisition_clock": _seconds(tags["AcquisitionTime"]) if tags.get("AcquisitionTime") else None,
        "position": tuple(float(v) for v in tags["ImagePositionPatient"]),
        "orientation": tuple(round(float(v), 4) for v in tags.get("ImageOrientationPatient") or []),
        "spacing": tuple(float(v) for v in tags.get("PixelSpacing") or []),
        "rescale": (float(1 if slope in (None, "") else slope), float(0 if intercept in (None, "") else intercept)),
    }


def _site(tags: dict, rules: DicomRules) -> str | None:
    """The site from ``rules.site_tag`` (group 1 of ``site_pattern``), or None."""
    value = _text(tags.get(rules.site_tag)) if rules.site_tag else ""
    match = re.search(rules.site_pattern or "(.+)", value) if value else None
    return (match.group(1) if match.groups() else match.group(0)) if match else None


def read_header(path: Path, rules: DicomRules = DicomRules()) -> list[dict]:
    """One record per MR image (each frame of a multi-frame file is one), or one record without
    geometry for another object of a series (SEG, secondary capture, ...). Raises
    ``InvalidDicomError``/``OSError`` for files that are not DICOM objects of a series."""
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=HEADER_TAGS + [t for t in (rules.patient_tag, rules.site_tag) if t])
    tags = {element.keyword: element.value for element in ds}  # convert each value once
    if not tags.get("SeriesInstanceUID"):
        raise InvalidDicomError("not an image file (no SeriesInstanceUID)")
    keys = (rules.patient_tag,) if rules.patient_tag else PATIENT_KEY_TAGS
    key_tag = next((k for k in keys if _text(tags.get(k))), None)
    if key_tag is None:
        raise InvalidDicomError(f"no patient key ({' or '.join(keys)})")
    record = {
        "path": str(path),
        "patient": _text(tags[key_tag]),
        "key_tag": key_tag,
        "visit": _text(tags.get("ClinicalTrialTimePointID")),
        "study_description": _text(tags.get("StudyDescription")),
        "site": _text(tags.get("ClinicalTrialSiteID")) or _site(tags, rules),
        "study": _text(tags.get("StudyInstanceUID")),
        "study_date": _text(tags.get("StudyDate")),
        "series": _text(tags["SeriesInstanceUID"]),
        "series_number": int(tags["SeriesNumber"]) if tags.get("SeriesNumber") not in (None, "") else None,
        "series_description": _text(tags.get("SeriesDescription")),
        "sop_class": _text(tags.get("SOPClassUID")),
        "image_type": tuple(_text(v).upper() for v in _values(tags.get("ImageType"))),
        "shape": (int(tags.get("Rows") or 0), int(tags.get("Columns") or 0)),
    }
    if record["sop_class"] not in MR_STORAGE:
        return [record]
    if tags.get("PerFrameFunctionalGroupsSequence") is not None:
        return [record | _image(_frame_tags(tags, k), k) for k in range(int(tags.get("NumberOfFrames") or 1))]
    return [record | _image(tags, None)]


def scan_headers(paths: list[Path], rules: DicomRules = DicomRules()) -> tuple[list[dict], list[tuple[str, str]]]:
    """Image records of readable files and (path, reason) for every file that is not a DICOM object."""
    headers, skipped = [], []
    for path in paths:
        try:
            headers += read_header(path, rules)
        except (InvalidDicomError, OSError, ValueError, AttributeError, TypeError, KeyError, IndexError) as err:
            skipped.append((str(path), f"{type(err).__name__}: {err}".splitlines()[0][:200]))
    return headers, skipped


def _where(image: dict) -> tuple[float, ...]:
    return tuple(round(v, 2) for v in image["position"])


def _groups(images: list[dict], key) -> list[list[dict]] | None:
    """Images grouped by ``key`` in ascending key order; None when an image has no key."""
    groups = defaultdict(list)
    for image in images:
        groups[key(image)].append(image)
    return None if None in groups else [groups[k] for k in sorted(groups)]


def split_phases(images: list[dict]) -> list[tuple[int | None, list[dict]]]:
    """(temporal position, images) of each phase of one series, in temporal order.

    Where slice positions repeat, the images are split by TemporalPositionIdentifier, else by
    TriggerTime, else by AcquisitionTime (the first that gives one image per position and phase;
    the phases are then numbered 1, 2, ...), else the k-th image of each position in
    InstanceNumber order belongs to phase k.
    """
    per_position = Counter(_where(i) for i in images)
    n = max(per_position.values())
    if n == 1:
        positions = {i["temporal_position"] for i in images}
        return [(positions.pop() if len(positions) == 1 else None, images)]
    for source in ("temporal_position", "TriggerTime", "acquisition_clock"):
        groups = _groups(images, lambda i: i["times"].get(source) if source == "TriggerTime" else i[source])
        if groups and len(groups) == n and all(len({_where(i) for i in g}) == len(g) for g in groups):
            return [(g[0]["temporal_position"] if source == "temporal_position" else k + 1, g)
                    for k, g in enumerate(groups)]
    phases, seen = defaultdict(list), Counter()
    for image in sorted(images, key=lambda i: (i["instance"], i["frame"] or 0, i["path"])):
        phases[seen[_where(image)]].append(image)
        seen[_where(image)] += 1
    return [(k + 1, phases[k]) for k in range(n)]


def _phase(key: tuple, images: list[dict], temporal_position: int | None) -> Phase:
    times = {}
    for image in images:  # slices of one phase may carry their own acquisition times
        for source, t in image["times"].items():
            times[source] = min(t, times.get(source, t))
    slices = [SliceHeader(i["path"], i["position"], i["orientation"], i["spacing"], i["shape"], i["rescale"],
                          i["frame"]) for i in images]
    return Phase(key, slices, temporal_position=temporal_position, times=times,
                 series_number=images[0]["series_number"])


def _skip_reason(image: dict, rules: DicomRules) -> str | None:
    """Why a series cannot be the DCE (a category, never a tag value), or None."""
    if image["sop_class"] == SegmentationStorage:
        return "skipped series: SEG"
    if image["sop_class"] not in MR_STORAGE:
        return "skipped series: not MR image storage"
    if image["image_type"] and image["image_type"][0] != "ORIGINAL":
        return "skipped series: derived (ImageType DERIVED)"
    if "LOCALIZER" in image["image_type"]:
        return "skipped series: localizer"
    description = image["series_description"]
    if any(re.search(p, description, re.IGNORECASE) for p in SERIES_EXCLUDE + tuple(rules.series_exclude)):
        return "skipped series: description deny-list"
    if rules.series_include and not any(re.search(p, description, re.IGNORECASE) for p in rules.series_include):
        return "skipped series: not in series_include"
    return None


def study_dce(series: dict[str, list[dict]], rules: DicomRules) -> tuple[list[Phase] | None, list[str], Counter]:
    """Phases of the one dynamic series of a study (None if there is not exactly one), the
    study's SEG files, and the number of series (or studies) per skip reason.

    A candidate is a series with at least MIN_PHASES phases, or MIN_PHASES or more single-phase
    series of identical geometry (one series per phase)."""
    reasons, segs, candidates, single = Counter(), [], [], defaultdict(list)
    for uid, images in series.items():
        reason = _skip_reason(images[0], rules)
        if reason:
            reasons[reason] += 1
            if images[0]["sop_class"] == SegmentationStorage:
                segs += sorted({i["path"] for i in images})
            continue
        phases = split_phases(images)
        if len(phases) >= MIN_PHASES:
            candidates.append([_phase((uid, tp), p, tp) for tp, p in phases])
        elif len(phases) == 1:
            geometry = (images[0]["orientation"], images[0]["shape"], tuple(sorted({_where(i) for i in images})))
            single[geometry].append(phases[0] + (uid,))
        else:
            reasons["skipped series: not dynamic"] += 1
    for group in single.values():
        if len(group) >= MIN_PHASES:
            candidates.append([_phase((uid, tp), p, tp) for tp, p, uid in group])
        else:
            reasons["skipped series: not dynamic"] += len(group)
    if len(candidates) != 1:
        reasons["several candidate dynamic series in study" if candidates else "no dynamic series in study"] += 1
        return None, segs, reasons
    return candidates[0], segs, reasons


def _patient_key(key: str, rules: DicomRules) -> str | None:
    if not rules.patient_pattern:
        return key
    match = re.fullmatch(rules.patient_pattern, key)
    return None if match is None else match.group(1 if match.re.groups else 0)


def _visit_name(image: dict, rules: DicomRules) -> str | None:
    """ClinicalTrialTimePointID, else visit_pattern on StudyDescription (None: no match), else ""
    (named later by study-date order)."""
    if image["visit"] or not rules.visit_pattern:
        return image["visit"]
    match = re.search(rules.visit_pattern, image["study_description"])
    return None if match is None else match.group(1 if match.re.groups else 0)


def _is_exam(series: dict[str, list[dict]]) -> bool:
    """Whether a study holds original MR images (an MRI exam, even one without a usable DCE)."""
    return any(i["sop_class"] in MR_STORAGE and i["image_type"][:1] in ((), ("ORIGINAL",))
               for images in series.values() for i in images[:1])


def group_visits(headers: list[dict], rules: DicomRules = DicomRules()):
    """``(patients, skipped)``: patient -> visit -> Visit with the DCE phases of its study, and
    (patient key or "-", visit or "-", reason, count) for what was skipped. Reasons are
    categories only, never tag values (no PHI). Visits without ClinicalTrialTimePointID or
    visit_pattern are named T0, T1, ... in study-date order."""
    studies = defaultdict(lambda: defaultdict(list))  # (patient, study) -> series -> images
    for h in headers:
        if h["sop_class"] not in MAMMOGRAPHY_STORAGE:
            studies[(h["patient"], h["study"])][h["series"]].append(h)
    skipped, found, studied = Counter(), defaultdict(list), []
    for (raw_key, _), series in studies.items():
        first = next(iter(series.values()))[0]
        key = _patient_key(raw_key, rules)
        if key is None:
            skipped[(raw_key, "-", "patient key does not match patient_pattern")] += 1
            continue
        visit = _visit_name(first, rules)
        if visit is None:
            skipped[(key, "-", "study description does not match visit_pattern")] += 1
            continue
        phases, segs, reasons = study_dce(series, rules)
        study = Visit(key, visit, first["site"], first["study_date"], {p.key: p for p in phases or []}, segs)
        studied.append((study, reasons))
        if phases or _is_exam(series):  # a failed exam keeps its place in the date order
            found[key].append(study)
    patients: dict[str, dict[str, Visit]] = defaultdict(dict)
    for key, visits in found.items():
        claims = defaultdict(list)
        for k, visit in enumerate(sorted(visits, key=lambda v: v.study_date)):
            visit.visit = visit.visit or f"T{k}"
            if visit.phases:
                claims[visit.visit].append(visit)
        for name, claimed in claims.items():
            if len(claimed) == 1:
                patients[key][name] = claimed[0]
            else:  # which study is the visit cannot be told from tags
                skipped[(key, name, "several studies with a dynamic series for one visit")] += len(claimed)
    for study, reasons in studied:  # reported once visits are named
        for reason, n in reasons.items():
            skipped[(study.patient, study.visit or "-", reason)] += n
    return dict(patients), [(p, v, reason, n) for (p, v, reason), n in sorted(skipped.items())]


def timing_source(phases: list[Phase]) -> str:
    """The first of TIMING_SOURCES whose times increase by at least MIN_STEP_S from phase to
    phase (in temporal-position order where every phase has one), else "index"."""
    by_position = all(p.temporal_position is not None for p in phases)
    ordered = sorted(phases, key=lambda p: p.temporal_position) if by_position else phases
    for source in TIMING_SOURCES:
        times = [p.times.get(source) for p in ordered]
        if None in times:
            continue
        times = times if by_position else sorted(times)
        if all(b - a >= MIN_STEP_S for a, b in zip(times, times[1:])):
            return source
    return "index"


def select_phases(phases: list[Phase], early_s: float = EARLY_S, late_s: float = LATE_S):
    """(pre-contrast, early, late) phases and how they were timed: a name of TIMING_SOURCES or
    "index". Sets each phase's ``time_s`` from that source.

    With timing: the pre-contrast phase is the first one; early and late are the post-contrast
    phases whose k-space centres are closest to ``early_s`` and ``late_s`` after injection, taken
    as the start of the first post-contrast phase (the I-SPY FTV readers' convention: no timing
    tag reliably holds the injection, and GE's TriggerTime counts from the series start). A phase's
    centre is its time plus half the interval between the first two post-contrast phases. By
    index (phases ordered by temporal position, else by SeriesNumber): first phase, second
    post-contrast phase (of three or more; else the first) and last phase: with the 60-120 s
    phases of breast DCE protocols the second post-contrast phase is centred 90-180 s after
    injection, nearest the early time, the first only 30-60 s.
    """
    if len(phases) < MIN_PHASES:
        raise PhaseError(f"{len(phases)} dynamic phase(s); need a pre-contrast and two post-contrast")
    how = timing_source(phases)
    for p in phases:
        p.time_s = p.times.get(how)
    pre, *post = acquisition_order(phases)
    if how != "index":
        start, half = post[0].time_s, (post[1].time_s - post[0].time_s) / 2
        early = min(post, key=lambda p: abs(p.time_s - start + half - early_s))
        late = min(post, key=lambda p: abs(p.time_s - start + half - late_s))
        if early is late:
            raise PhaseError("early and late phases coincide; timing tags cover too short a window")
        return pre, early, late, how
    return pre, post[1] if len(post) >= 3 else post[0], post[-1], how


def acquisition_order(phases: list[Phase]) -> list[Phase]:
    """Phases in acquisition order: by ``time_s`` (as ``select_phases`` sets it), else by temporal
    position, else by SeriesNumber."""
    for order in ("time_s", "temporal_position", "series_number"):
        if all(getattr(p, order) is not None for p in phases):
            return sorted(phases, key=lambda p: getattr(p, order))
    raise PhaseError("phases have neither usable timing tags, TemporalPositionIdentifier nor SeriesNumber")

