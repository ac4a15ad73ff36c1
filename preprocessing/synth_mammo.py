"""Synthetic pre-treatment mammograms: four views (L/R x CC/MLO) per patient as DICOM Digital
Mammography X-Ray Image Storage - For Presentation, written by ``synth`` beside the patient's MRI.

Each breast is a compressed half-ellipse from the chest wall whose semi-axes come from the MRI
phantom's breast (``Anatomy.breast_axes``: lateral, depth, cranio-caudal). A point of the breast is
given as fractions of those semi-axes: lateral (+ outer), superior (+ upper) and depth from the
chest wall. The CC view shows depth x lateral (lateral up), the MLO view depth x superior (upper
up: its tilt is left out so that upper and lower stay apart, and shows only as the pectoral muscle
triangle at the upper chest wall corner). Views are stored as displayed: left views with the chest
wall on the left, right views on the right, a lead laterality marker in the far corner.
Brightness is projected attenuation: fat, fibroglandular tissue thresholded from a smooth random
field so that its area matches the BI-RADS density category, and spherical masses whose added
attenuation follows their chord length. The patient's clinical record places the tumour
(laterality, ICD-O topography, density, focality) and ``truth.csv``'s ``y_MG`` (margin score:
> 0 circumscribed, < 0 spiculated) shapes its margin; a blank is drawn from the patient's own stream.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation
from scipy.ndimage import gaussian_filter, zoom

from .dicom_writing import dicom_uid, new_dataset, opaque_name

VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
# direction of the image rows and columns as displayed (DICOM PatientOrientation)
PATIENT_ORIENTATION = {("L", "CC"): ["A", "R"], ("L", "MLO"): ["A", "FR"],
                       ("R", "CC"): ["P", "L"], ("R", "MLO"): ["P", "FL"]}
DETECTOR_MM = (250.0, 200.0)  # rows x columns
PIXEL_MM = {"demo": 0.6, "full": 0.1}
MAMMOGRAPHY_SHARE = 0.85
MG_STREAM = 31  # appended to a patient's seed: the mammograms never draw from the MRI's stream

# ICD-O-3 topography -> clock-angle centres (degrees from the outer side towards upper), half-width,
# radial position and depth from the chest wall as fractions of the breast's semi-axes
LOCATIONS = {
    "C50.0": ((0,), 180, (0.0, 0.1), (0.75, 0.85)),  # nipple
    "C50.1": ((0,), 180, (0.0, 0.15), (0.35, 0.6)),  # central portion, behind the areola
    "C50.2": ((135,), 20, (0.35, 0.6), (0.2, 0.5)),  # upper-inner quadrant
    "C50.3": ((225,), 20, (0.35, 0.6), (0.2, 0.5)),  # lower-inner
    "C50.4": ((45,), 20, (0.35, 0.6), (0.2, 0.5)),  # upper-outer
    "C50.5": ((315,), 20, (0.35, 0.6), (0.2, 0.5)),  # lower-outer
    "C50.6": ((40,), 10, (0.65, 0.8), (0.08, 0.2)),  # axillary tail
    "C50.8": ((0, 90, 180, 270), 5, (0.35, 0.6), (0.2, 0.5)),  # overlapping: on a quadrant boundary
    "C50.9": ((0,), 180, (0.2, 0.6), (0.2, 0.6)),  # unspecified: anywhere
}
LOCATION_P = {"C50.0": 0.02, "C50.1": 0.06, "C50.2": 0.15, "C50.3": 0.06, "C50.4": 0.45, "C50.5": 0.10,
              "C50.6": 0.01, "C50.8": 0.12, "C50.9": 0.03}
DENSITY_P = {"A": 0.1, "B": 0.4, "C": 0.4, "D": 0.1}
DENSE_FRACTION = {"A": 0.12, "B": 0.32, "C": 0.58, "D": 0.82}  # share of the breast's area
FOCALITY_P = {"unifocal": 0.7, "multifocal": 0.2, "satellite": 0.1}
LATERALITY = {"left": "L", "right": "R"}
# projected attenuation, relative (FGT: a dense region is partly glandular along the ray); masses add
# MASS_CONTRAST x chord / compressed thickness
FAT, FGT, MUSCLE, MASS_CONTRAST = 0.28, 0.45, 0.45, 0.9
SPICULES, SPICULE_MM = 14, 6.0  # spicules of the most spiculated mass; a spicule's projected thickness
DISPLAY = (60.0, 2600.0, 3800.0)  # stored value of air, gain, value of the lead laterality marker


@dataclass(frozen=True)
class Mass:
    side: str
    position: tuple[float, float, float]  # lateral, superior, depth: fractions of the semi-axes
    radius_mm: float


@dataclass(frozen=True)
class MammoPatient:
    """What a patient's mammograms show."""

    laterality: str  # "L" or "R": the tumour's breast
    location: str  # ICD-O topography
    density: str  # BI-RADS A-D
    focality: str
    breast_axes: dict  # side -> semi-axes (lateral, depth, cranio-caudal), mm
    masses: tuple[Mass, ...]  # the tumour first
    spiculation: float  # of the tumour's margin: 0 circumscribed ... 1 spiculated
    seed: int  # texture and noise of every view


def _given(record: dict, column: str, levels) -> str | None:
    """The record's value of ``column`` (None when blank); a value outside ``levels`` is a generator bug."""
    value = record.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return None
    if str(value).strip() not in levels:
        raise ValueError(f"{column} '{value}' is not one of {', '.join(levels)}")
    return str(value).strip()


def _number(value) -> float | None:
    return None if value is None or not np.isfinite(float(value)) else float(value)


def _place(location: str, rng: np.random.Generator) -> tuple[float, float, float]:
    centres, half_width, radial, depth = LOCATIONS[location]
    angle = np.radians(rng.choice(centres) + rng.uniform(-half_width, half_width))
    rho = rng.uniform(*radial)
    return float(rho * np.cos(angle)), float(rho * np.sin(angle)), float(rng.uniform(*depth))


def sample_patient(record: dict, tumour_volume_ml: float, breast_axes, rng: np.random.Generator) -> MammoPatient:
    """Attributes from the patient's record (its ``true_*`` truth values first; blanks drawn, for
    records from elsewhere), masses and both breasts' shapes.

    Every draw happens whether or not the record knows the value, so one known attribute does
    not change what the others become."""
    drawn = {"laterality": "LR"[int(rng.random() < 0.48)],
             "location": str(rng.choice(list(LOCATION_P), p=list(LOCATION_P.values()))),
             "density": str(rng.choice(list(DENSITY_P), p=list(DENSITY_P.values()))),
             "focality": str(rng.choice(list(FOCALITY_P), p=list(FOCALITY_P.values()))),
             "y_MG": float(rng.standard_normal())}
    # the truth table's values where the cohort has them (the table may leave them blank)
    record = {**record, **{k.removeprefix("true_"): v for k, v in record.items() if k.startswith("true_")}}
    laterality = _given(record, "laterality", LATERALITY)
    given = {"laterality": laterality and LATERALITY[laterality],
             "location": _given(record, "tumour_location", LOCATIONS),
             "density": _given(record, "breast_density", DENSITY_P),
             "focality": _given(record, "focality", FOCALITY_P),
             "y_MG": _number(record.get("y_MG"))}
    value = {k: drawn[k] if given[k] is None else given[k] for k in drawn}
    side = value["laterality"]
    other = "R" if side == "L" else "L"
    axes = {side: np.asarray(breast_axes, float), other: np.asarray(breast_axes, float) * rng.uniform(0.93, 1.07, 3)}
    radius = (3 * tumour_volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    masses = [Mass(side, _place(value["location"], rng), radius)]
    scale = axes[side][[0, 2, 1]]  # mm per unit of (lateral, superior, depth)
    main = np.array(masses[0].position)
    if value["focality"] == "multifocal":  # further foci in other parts of the breast
        for _ in range(int(rng.integers(1, 3))):
            r = radius * rng.uniform(0.4, 0.7)
            for _attempt in range(20):  # a focus of its own, clear of the tumour
                position = np.array(_place("C50.9", rng))
                if np.linalg.norm((position - main) * scale) > radius + r + 10:
                    break
            masses.append(Mass(side, tuple(float(p) for p in position), r))
    elif value["focality"] == "satellite":  # small nodules just beside the tumour
        for _ in range(int(rng.integers(1, 4))):
            r = radius * rng.uniform(0.2, 0.35)
            direction = rng.normal(size=3)
            offset = direction / np.linalg.norm(direction) * (radius + r + rng.uniform(2, 12))
            masses.append(Mass(side, tuple(float(p) for p in main + offset / scale), r))
    return MammoPatient(side, value["location"], value["density"], value["focality"], axes, tuple(masses),
                        float(1 / (1 + np.exp(1.5 * value["y_MG"]))), int(rng.integers(2**31)))


def render_view(patient: MammoPatient, side: str, view: str, pixel_mm: float) -> np.ndarray:
    """Stored 12-bit values of one view, as displayed (chest wall left for L, right for R)."""
    rng = np.random.default_rng([patient.seed, "LR".index(side), ("CC", "MLO").index(view)])
    lateral, depth, cranio_caudal = patient.breast_axes[side]
    shape = tuple(round(d / pixel_mm) for d in DETECTOR_MM)
    y, x = np.meshgrid(*((np.arange(n) + 0.5) * pixel_mm for n in shape), indexing="ij")  # mm
    # compression spreads the breast; its vertical extent is lateral (CC) or cranio-caudal (MLO)
    reach = depth * rng.uniform(1.05, 1.15)
    half_height = (lateral if view == "CC" else cranio_caudal) * rng.uniform(1.1, 1.25)
    centre = DETECTOR_MM[0] / 2 + rng.uniform(-10, 10)
    thickness_mm = rng.uniform(40, 60)
    r = np.hypot(x / reach, (y - centre) / half_height)
    skin = np.tanh(6 * np.clip(1 - r, 0, None))  # compressed thickness falls off towards the skin
    fine, coarse = _texture(shape, pixel_mm, rng)
    field = coarse + 0.4 * fine + 1.5 * (0.6 - r)  # glandular tissue gathers behind the nipple
    threshold = np.quantile(field[r < 1], 1 - DENSE_FRACTION[patient.density])
    fgt = 1 / (1 + np.exp(-(field - threshold) / 0.25))
    signal = skin * (FAT + (FGT - FAT) * fgt)
    if view == "MLO":  # pectoral muscle: a triangle along the chest wall from above the breast
        top = centre - half_height * rng.uniform(1.0, 1.2)
        width, height = reach * rng.uniform(0.25, 0.4), half_height * rng.uniform(0.9, 1.3)
        muscle = (y >= top) & (x < width * (1 - (y - top) / height))
        signal = np.where(muscle, np.maximum(signal, MUSCLE * (1 + 0.05 * fine)), signal)
    noise = rng.normal(0, 1, shape)
    for k, mass in enumerate(patient.masses):
        if mass.side != side:
            continue
        out, up, deep = mass.position
        centre_mm = (centre - (out if view == "CC" else up) * half_height, deep * reach)
        spiculation = patient.spiculation if k == 0 else 0.0  # satellites and further foci: circumscribed
        reach_mm = mass.radius_mm * (1 + 2 * spiculation) + 2
        window = tuple(slice(max(0, int((c - reach_mm) / pixel_mm)), int((c + reach_mm) / pixel_mm) + 1)
                       for c in centre_mm)
        rng_mass = np.random.default_rng([patient.seed, k, ("CC", "MLO").index(view)])
        chord = _mass_chord(y[window] - centre_mm[0], x[window] - centre_mm[1], mass.radius_mm, spiculation,
                            fine[window], rng_mass)
        signal[window] += MASS_CONTRAST * chord / thickness_mm * (skin[window] > 0)
    air, gain, marker = DISPLAY
    stored = air + gain * signal + noise * (4 + 12 * signal)
    margin = round(8 / pixel_mm)  # lead laterality marker in the far upper corner: not part of the breast
    stored[margin:3 * margin, -3 * margin:-margin] = marker
    stored = np.clip(np.round(stored), 0, 4095).astype(np.uint16)
    return stored if side == "L" else stored[:, ::-1].copy()


def _mass_chord(dy, dx, radius: float, spiculation: float, fine, rng: np.random.Generator) -> np.ndarray:
    """Projected path length (mm) through a mass: a sphere whose margin grows lobulated and sprouts
    more and longer spicules as ``spiculation`` rises."""
    distance = np.hypot(dy, dx)
    rho = distance / radius * (1 + (0.05 + 0.1 * spiculation) * fine)
    chord = 2 * radius * np.sqrt(np.clip(1 - rho**2, 0, None))
    theta = np.arctan2(dy, dx)
    for _ in range(int(SPICULES * spiculation)):
        angle, length = rng.uniform(0, 2 * np.pi), radius * spiculation * rng.uniform(0.8, 2.0)
        along = distance * np.cos(theta - angle)
        across = distance * np.abs(np.sin(theta - angle))
        taper = np.clip(1 - (along - radius) / length, 0, 1) * (along > 0.8 * radius)  # from the margin out
        chord += SPICULE_MM * taper * np.exp(-((across / (0.4 + 0.6 * taper)) ** 2))
    return chord


def _texture(shape, pixel_mm: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fine and coarse smooth random fields (~N(0, 1)), drawn on a 1 mm grid whatever the pixel size."""
    grid = tuple(round(d) for d in DETECTOR_MM)
    fields = []
    for sigma_mm in (1.2, 4.0):
        f = gaussian_filter(rng.standard_normal(grid), sigma_mm)
        fields.append(zoom(f / f.std(), np.array(shape) / grid, order=1, grid_mode=True, mode="nearest"))
    return fields[0], fields[1]


def plan_mammography(jobs: list[dict], sites: int, share: float = MAMMOGRAPHY_SHARE,
                     resolution: str = "demo") -> None:
    """Set each job's ``mammography_mm`` (pixel size; None: no mammograms): a ``share`` of the
    patients has a pre-treatment mammogram, where there are several sites none at the last one
    (a hospital without mammography)."""
    without = f"S{sites:02d}" if sites > 1 else None  # cohort.sample_sites names sites S01, S02, ...
    for job in jobs:
        has = np.random.default_rng([job["seed"], MG_STREAM, 0]).random() < share
        job["mammography_mm"] = PIXEL_MM[resolution] if has and job["patient"]["site"] != without else None


def patient_mammography(job: dict, anatomy) -> tuple[MammoPatient, np.random.Generator]:
    """What the patient's mammograms show, and the generator for the rest of the study."""
    rng = np.random.default_rng([job["seed"], MG_STREAM, 1])
    return sample_patient(job["patient"], anatomy.tumour_volume_ml, anatomy.breast_axes, rng), rng


def write_mammograms(job: dict, anatomy, phi: dict, baseline_date: dt.date, patient_dir: Path) -> int:
    """The four views of a screening study a few days before the first MRI (which lies within 3 days
    of ``baseline_date``), with the MRI's patient tags and PHI and an accession number of its own;
    returns the number of files written."""
    pixel_mm = job.get("mammography_mm")
    if pixel_mm is None:
        return 0
    patient, rng = patient_mammography(job, anatomy)
    seed, record = job["seed"], job["patient"]
    date = baseline_date - dt.timedelta(days=int(rng.integers(4, 22)))
    study = {
        **phi,
        "PatientSex": "F",
        "AccessionNumber": f"{rng.integers(10**8, 10**9)}",
        "StudyInstanceUID": dicom_uid(seed, "MG"),
        "StudyDate": date.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(8, 17)):02d}{int(rng.integers(0, 60)):02d}00",
        "StudyDescription": "MAMMO SCREENING BILAT",
        "ClinicalTrialTimePointID": "SCREENING",  # before T0: no MRI visit claims it
        "ClinicalTrialSubjectID": record["id"],
        "ClinicalTrialSiteID": record["site"],
        "FrameOfReferenceUID": dicom_uid(seed, "MG", "frame"),
    }
    study_dir = patient_dir / opaque_name(seed, "MG")
    for number, (side, view) in enumerate(VIEWS, start=1):
        ds = _view_dataset(study, side, view, number, pixel_mm, seed, rng)
        pixels = render_view(patient, side, view, pixel_mm)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        folder = study_dir / opaque_name(seed, "MG", side, view)
        folder.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / f"{opaque_name(seed, 'MG', number)}.dcm", enforce_file_format=True)
    return len(VIEWS)


def _view_dataset(study: dict, side: str, view: str, number: int, pixel_mm: float, seed: int,
                  rng: np.random.Generator) -> Dataset:
    ds = new_dataset(DigitalMammographyXRayImageStorageForPresentation)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = dicom_uid(seed, "MG", side, view, "image")
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.Manufacturer, ds.ManufacturerModelName = "HOLOGIC, Inc.", "Selenia Dimensions"
    for key, value in study.items():
        setattr(ds, key, value)
    ds.SeriesInstanceUID = dicom_uid(seed, "MG", side, view)
    ds.SeriesNumber, ds.InstanceNumber = number, 1
    ds.SeriesDescription = f"{side} {view}"
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = side
    ds.ViewPosition = view
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = VIEW_CODES[view][0], "SCT", VIEW_CODES[view][1]
    code.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [code]
    ds.PatientOrientation = PATIENT_ORIENTATION[side, view]
    ds.PositionerPrimaryAngle = 0 if view == "CC" else (45 if side == "R" else -45)
    ds.KVP = round(float(rng.uniform(26, 34)), 1)
    ds.BodyPartThickness = round(float(rng.uniform(35, 65)), 1)
    ds.CompressionForce = round(float(rng.uniform(60, 150)), 1)
    ds.ImagerPixelSpacing = ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 1600, 3000
    ds.BurnedInAnnotation = "NO"
    return ds

