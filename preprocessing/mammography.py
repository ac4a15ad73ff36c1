"""Mammograms for the MRP fusion model (Gao et al.): DICOM views -> ``images/<id>/mg_<L|R>_<CC|MLO>.nii.gz``.

As the paper prepares them: the breast is segmented from the background (Otsu threshold, largest
component, holes filled: burned-in markers and labels go), cropped, turned so that the chest wall
is on the left for both breasts, resized keeping its aspect ratio into a fixed size (zero-padded:
vertically centred, nipple side), and min-max normalised to [0, 1] inside the breast (background
0). The output is 2-D float32, rows x columns; its affine holds the resulting pixel spacing.

Routed here by SOP class (Digital Mammography X-Ray Image Storage; ``dicom_index.group_visits``
leaves these objects out of the MRI visits). Per patient, each view comes from the latest study
that has it on or before the first MRI (later films are follow-up, listed and not used). A view is excluded, with a one-line reason naming patient and view and never a tag
value, when its file cannot be read, is not MG, lacks a CC/MLO view code or a laterality, carries
contradicting view or laterality tags, is ambiguous (several images of the view on one date), or
when the clinical field ``laterality`` names the breast that none of the patient's views shows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DigitalMammographyXRayImageStorageForProcessing
from scipy import ndimage

from .atomic import atomic_path
from .dicom_index import MAMMOGRAPHY_STORAGE, DicomRules, _patient_key
from .parallel import parallel_map

MG_SIZE = (128, 64)  # rows, columns; the paper's 1024 x 512 on a GPU
# ViewCodeSequence codes of CID 4014: SNOMED CT and their SNOMED-RT predecessors
VIEW_CODES = {"399162004": "CC", "R-10242": "CC", "399368009": "MLO", "R-10226": "MLO"}
TABLE_LATERALITY = {"left": "L", "l": "L", "right": "R", "r": "R"}


class ViewError(ValueError):
    """A view that cannot be used (the message names no tag value)."""


def _text(ds, keyword: str) -> str:
    return str(ds.get(keyword) or "").strip().upper()


def view_of(ds) -> tuple[str | None, str | None]:
    """(laterality, view) of a mammogram from its tags (None where absent or not L/R, CC/MLO);
    ``ViewError`` when its tags contradict each other."""
    lateralities = {v for v in (_text(ds, "ImageLaterality"), _text(ds, "Laterality")) if v}
    if len(lateralities) > 1:
        raise ViewError("contradicting laterality tags (ImageLaterality, Laterality)")
    codes = {VIEW_CODES.get(str(item.get("CodeValue", "")).strip(), "other")
             for item in ds.get("ViewCodeSequence") or []}
    position = _text(ds, "ViewPosition")
    if codes and position in ("CC", "MLO") and codes != {position}:
        raise ViewError("contradicting view tags (ViewCodeSequence, ViewPosition)")
    views = (codes or {position}) & {"CC", "MLO"}
    laterality = lateralities.pop() if lateralities else None
    return (laterality if laterality in ("L", "R") else None), (views.pop() if len(views) == 1 else None)


def breast_mask(image: np.ndarray) -> np.ndarray:
    """The breast: above the Otsu threshold, largest connected component, holes filled. The
    threshold is taken on the image clipped at its 99th percentile: a small saturated marker or
    label would otherwise pull it above the breast."""
    import SimpleITK as sitk

    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(np.minimum(image, np.percentile(image, 99))))
    labels, n = ndimage.label(image > otsu.GetThreshold())
    if n == 0:
        raise ViewError("no breast found (uniform image)")
    return ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    factors = np.array(shape) / image.shape
    sigma = np.maximum(0, (1 / factors - 1) / 2)  # anti-aliasing before shrinking, as skimage's resize
    return ndimage.zoom(ndimage.gaussian_filter(image, sigma), factors, order=1, grid_mode=True, mode="nearest")


def prepare_image(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The breast of one view cropped, chest wall on the left, resized into ``size`` keeping its
    aspect ratio, zero-padded and normalised to [0, 1]; returns it and the resize factor."""
    mask = breast_mask(image)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    image, mask = image[box], mask[box]
    if mask[:, -1].sum() > mask[:, 0].sum():  # the chest wall is the edge the breast fills most
        image, mask = image[:, ::-1], mask[:, ::-1]
    scale = min(size[0] / image.shape[0], size[1] / image.shape[1])
    shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    image = _resize(np.where(mask, image, image[mask].min()), shape)
    mask = _resize(mask.astype(np.float32), shape) > 0.5
    lo, hi = (image[mask].min(), image[mask].max()) if mask.any() else (0.0, 0.0)
    if hi <= lo:
        raise ViewError("no contrast inside the breast")
    out = np.zeros(size, np.float32)
    top = (size[0] - shape[0]) // 2
    out[top:top + shape[0], :shape[1]] = np.where(mask, (image - lo) / (hi - lo), 0.0)
    return out, scale


def _problem(ds, laterality: str | None, view: str | None) -> str | None:
    if _text(ds, "Modality") != "MG":
        return "not a mammogram (modality is not MG)"
    if view is None:
        return "no CC or MLO view code"
    if laterality is None:
        return "no image laterality (L or R)"
    return None


def process_patient(job: dict) -> dict:
    """The views of one patient: ``{"id", "views": {view: relative path}, "reasons": [(label, reason)]}``."""
    found, reasons = defaultdict(list), []
    for path, date in job["files"]:
        try:
            ds = pydicom.dcmread(path)
            laterality, view = view_of(ds)
        except ViewError as err:
            reasons.append(("MG", str(err)))
            continue
        except Exception as err:  # the text may hold paths or tag values
            reasons.append(("MG", f"unreadable mammogram ({type(err).__name__})"))
            continue
        problem = _problem(ds, laterality, view)
        if problem:
            reasons.append((f"MG {laterality or '?'}_{view or '?'}", problem))
        else:
            found[f"{laterality}_{view}"].append((date, ds))
    chosen = {}
    for view, images in found.items():
        latest = max(date for date, _ in images)
        candidates = [ds for date, ds in images if date == latest]
        if len(candidates) > 1:
            reasons.append((f"MG {view}", "several images of the view on one date (which one cannot be told)"))
        else:
            chosen[view] = candidates[0]
    side = job["laterality"]
    if side and chosen and not any(view.startswith(side) for view in chosen):
        breast = {"L": "left", "R": "right"}
        reasons += [(f"MG {view}", f"laterality contradicts the clinical table: no view of the {breast[side]} "
                                   "breast, which has the tumour") for view in chosen]
        chosen = {}
    views = {}
    for view, ds in sorted(chosen.items()):
        rel = f"images/{job['public_id']}/mg_{view}.nii.gz"
        try:
            pixels = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
            if pixels.ndim != 2:
                raise ViewError("not a single 2-D image")
            if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":  # dense tissue bright
                pixels = pixels.max() - pixels
            image, scale = prepare_image(pixels, job["size"])
        except ViewError as err:
            reasons.append((f"MG {view}", str(err)))
            continue
        except Exception as err:  # undecodable pixel data; the text may hold tag values
            reasons.append((f"MG {view}", f"unreadable mammogram pixel data ({type(err).__name__})"))
            continue
        spacing = [float(s) for s in (ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0))]
        affine = np.diag([spacing[0] / scale, spacing[1] / scale, 1.0, 1.0])
        with atomic_path(Path(job["out"]) / rel) as tmp:
            nib.save(nib.Nifti1Image(image, affine), tmp)
        views[view] = rel
    return {"id": job["public_id"], "views": views, "reasons": reasons}


def add_mammograms(entries: list[dict], headers: list[dict], patients: dict, public_id, rules: DicomRules,
                   out: Path, first_mri: dict[str, str], size: tuple[int, int] = MG_SIZE,
                   workers: int = 1) -> list[dict]:
    """Prepare the pre-treatment mammograms of the datalist's patients (taken on or before their
    first MRI, ``first_mri``: StudyDate per patient key), add ``mammograms: {view: path}`` to each
    entry that has any, and return the exclusion rows."""
    files, skipped = defaultdict(list), Counter()
    for h in headers:
        if h["sop_class"] not in MAMMOGRAPHY_STORAGE:
            continue
        if h["sop_class"] == DigitalMammographyXRayImageStorageForProcessing:  # raw detector data
            skipped["skipped mammograms: For Processing"] += 1
            continue
        files[_patient_key(h["patient"], rules)].append((h["path"], h["study_date"]))
    by_public = {public_id(pid): pid for pid in patients}
    jobs = []
    rows = []
    for entry in entries:
        pid = by_public[entry["id"]]
        later = [f for f in files.get(pid, []) if f[1] > first_mri.get(pid, "")]
        if later:  # follow-up films are not the pre-treatment mammogram the model is built on
            rows.append({"id": entry["id"], "visit": "MG",
                         "reason": f"{len(later)} image(s) taken after the first MRI (not pre-treatment)"})
            files[pid] = [f for f in files[pid] if f not in later]
        if files.get(pid):
            laterality = str(patients[pid]["clinical"].get("laterality") or "").strip().lower()
            jobs.append({"public_id": entry["id"], "files": sorted(files[pid]), "out": str(out), "size": tuple(size),
                         "laterality": TABLE_LATERALITY.get(laterality)})
    rows += [{"id": "-", "visit": "-", "reason": f"{reason} (x{n})"} for reason, n in sorted(skipped.items())]
    views = {}
    for result in parallel_map(process_patient, jobs, workers, "mammograms", "patient"):
        views[result["id"]] = result["views"]
        rows += [{"id": result["id"], "visit": label, "reason": reason} for label, reason in result["reasons"]]
    for entry in entries:
        if views.get(entry["id"]):
            entry["mammograms"] = views[entry["id"]]
    return rows
