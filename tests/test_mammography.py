"""Synthetic mammograms (synth_mammo) and their preparation for the MRP model (mammography)."""

import dataclasses
import gzip
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, JPEG2000Lossless
from scipy import ndimage

from preprocessing.mammography import breast_mask
from preprocessing.prepare import Options, prepare
from preprocessing.schema import Field, preset
from preprocessing.synth import patient_anatomy, patient_jobs, write_patient
from preprocessing.synth_mammo import (
    DENSE_FRACTION,
    DISPLAY,
    FAT,
    FGT,
    VIEWS,
    plan_mammography,
    render_view,
    sample_patient,
)

AXES = np.array([53.0, 57.0, 46.0])  # lateral, depth, cranio-caudal semi-axes of a breast (mm)
PIXEL_MM = 0.6
QUADRANTS = {"C50.2": ("inner", "upper"), "C50.3": ("inner", "lower"), "C50.4": ("outer", "upper"),
             "C50.5": ("outer", "lower")}
# patients of the end-to-end cohort (seed 2: T0 tumours of 10, 6 and 4 mL)
RECORDS = [
    {"laterality": "right", "tumour_location": "C50.5", "breast_density": "A", "focality": "unifocal", "y_MG": 2.0},
    {"laterality": "left", "tumour_location": "C50.2", "breast_density": "B", "focality": "unifocal", "y_MG": 2.0},
    {"laterality": "left", "tumour_location": "C50.4", "breast_density": "A", "focality": "unifocal", "y_MG": 2.0},
]
MG_SIZE = (96, 48)


def _patient(seed=0, volume_ml=8.0, **record):
    return sample_patient(record, volume_ml, AXES, np.random.default_rng(seed))


def _mass_only(patient, side, view):
    """What the masses add to a view: same breasts, texture and noise rendered without them."""
    empty = dataclasses.replace(patient, masses=())
    return render_view(patient, side, view, PIXEL_MM).astype(float) - render_view(empty, side, view, PIXEL_MM)


def _nipple_row(breast: np.ndarray) -> float:
    """Row of the nipple: the rows where the breast reaches farthest from the chest wall."""
    width = breast.sum(axis=1)
    return float(np.flatnonzero(width >= 0.9 * width.max()).mean())


def _expected_half(location: str, view: str) -> str:
    inner_outer, upper_lower = QUADRANTS[location]
    return {"outer": "above", "upper": "above", "inner": "below", "lower": "below"}[
        inner_outer if view == "CC" else upper_lower]  # CC: lateral up; MLO: superior up


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("location", sorted(QUADRANTS))
def test_rendered_mass_lies_in_the_breast_and_quadrant_of_the_record(side, location):
    patient = _patient(laterality=side, tumour_location=location, focality="unifocal", y_MG=2.0)
    for image_side, view in VIEWS:
        mass = _mass_only(patient, image_side, view)
        if image_side != side[0].upper():
            assert not mass.any()  # the other breast has none
            continue
        breast = breast_mask(render_view(dataclasses.replace(patient, masses=()), image_side, view, PIXEL_MM))
        rows, cols = np.nonzero(mass > 0.5 * mass.max())
        assert breast[int(rows.mean()), int(cols.mean())]
        half = "above" if rows.mean() < _nipple_row(breast) else "below"
        assert half == _expected_half(location, view), (view, half)
        chest_wall_col = 0 if image_side == "L" else mass.shape[1] - 1  # stored as displayed
        assert abs(cols.mean() - chest_wall_col) > 10


def test_mass_size_follows_the_tumour_volume():
    diameters = []
    for volume in (2.0, 16.0):
        patient = _patient(volume_ml=volume, laterality="left", tumour_location="C50.4", y_MG=3.0)
        mass = _mass_only(patient, "L", "CC")
        diameters.append(2 * np.sqrt((mass > 0.5 * mass.max()).sum() / np.pi) * PIXEL_MM)
        radius = patient.masses[0].radius_mm
        assert diameters[-1] == pytest.approx(2 * radius * 0.87, rel=0.25)  # half maximum of a sphere's chord
    assert diameters[1] / diameters[0] == pytest.approx(2.0, rel=0.2)  # 8 x the volume: 2 x the diameter


def test_spicules_grow_as_the_margin_score_falls():
    spread = []
    for y_mg in (2.0, -2.0):
        patient = _patient(laterality="left", tumour_location="C50.4", y_MG=y_mg)
        mass = _mass_only(patient, "L", "CC")
        core = ndimage.binary_dilation(mass > 0.5 * mass.max(), iterations=round(6 / PIXEL_MM))
        spread.append(int(((mass > 40) & ~core).sum()))  # brighter than noise, well outside the mass
    assert spread[1] > 5 * max(spread[0], 10)


def test_density_texture_increases_with_the_bi_rads_category():
    means, dense = [], []
    for density in "ABCD":
        patient = dataclasses.replace(_patient(breast_density=density, laterality="right"), masses=())
        image = render_view(patient, "L", "CC", PIXEL_MM).astype(float)
        breast = breast_mask(image)
        inner = ndimage.binary_erosion(breast, iterations=round(10 / PIXEL_MM))  # off the skin fall-off
        means.append(image[breast].mean())
        dense.append((image[inner] > DISPLAY[0] + DISPLAY[1] * (FAT + FGT) / 2).mean())  # nearer glandular than fat
    assert all(a < b for a, b in zip(means, means[1:]))
    assert dense == pytest.approx([DENSE_FRACTION[d] for d in "ABCD"], abs=0.15)


def test_blank_attributes_are_drawn_and_known_ones_change_nothing_else():
    drawn = _patient(seed=3)
    for blank in (None, np.nan, " "):
        again = _patient(seed=3, laterality=blank, breast_density=blank)
        assert (again.laterality, again.density, again.location) == (drawn.laterality, drawn.density, drawn.location)
    known = _patient(seed=3, breast_density="D" if drawn.density != "D" else "A")
    assert (known.laterality, known.location, known.focality) == (drawn.laterality, drawn.location, drawn.focality)
    with pytest.raises(ValueError, match="tumour_location"):
        _patient(tumour_location="C51.0")


def test_multifocal_and_satellite_masses():
    multifocal = _patient(seed=1, laterality="left", focality="multifocal")
    satellite = _patient(seed=1, laterality="left", focality="satellite")
    assert len(multifocal.masses) > 1 and len(satellite.masses) > 1
    assert {m.side for m in multifocal.masses + satellite.masses} == {"L"}
    tumour = satellite.masses[0]
    scale = AXES[[0, 2, 1]]
    for nodule in satellite.masses[1:]:  # small and just beside the tumour
        gap = np.linalg.norm((np.array(nodule.position) - tumour.position) * scale)
        assert nodule.radius_mm < 0.4 * tumour.radius_mm and gap < tumour.radius_mm + nodule.radius_mm + 13


def test_mammography_share_and_the_site_without_mammography():
    _, _, jobs = patient_jobs("unused", 60, 3, 0, "demo")
    plan_mammography(jobs, 3)
    has = pd.DataFrame({"site": [j["patient"]["site"] for j in jobs],
                        "mg": [j["mammography_mm"] is not None for j in jobs]}).groupby("site")["mg"].mean()
    assert has["S03"] == 0 and 0.65 < has[["S01", "S02"]].mean() <= 1.0


def test_mammograms_leave_the_mri_untouched(tmp_path):
    _, _, jobs = patient_jobs(tmp_path / "a", 1, 1, 4, "demo")
    written = {}
    for name, pixel_mm in (("without", None), ("with", PIXEL_MM)):
        job = {**jobs[0], "out": str(tmp_path / name), "mammography_mm": pixel_mm}
        write_patient(job)
        written[name] = {p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*.dcm")}
    assert len(written["with"]) == len(written["without"]) + 4
    assert all(written["with"][path] == data for path, data in written["without"].items())


@pytest.fixture(scope="module")
def mg_raw(tmp_path_factory):
    """Three patients at one site, all with mammograms, their attributes set by RECORDS."""
    raw = tmp_path_factory.mktemp("mg") / "raw"
    clinical, truth, jobs = patient_jobs(raw, len(RECORDS), 1, 2, "demo")
    plan_mammography(jobs, 1, share=1.0)
    for k, (job, record) in enumerate(zip(jobs, RECORDS)):
        true = {f"true_{c}": v for c, v in record.items() if c != "y_MG"}  # what the renderer draws
        job["patient"].update(record | true)
        write_patient(job)
        for column, value in (record | true).items():
            (truth if column == "y_MG" or column.startswith("true_") else clinical).loc[k, column] = value
    clinical.to_csv(raw / "clinical.csv", index=False)
    truth.to_csv(raw / "truth.csv", index=False)
    return raw, jobs


def _files(raw, patient):
    """(MG files by view, one T0 MRI file) of a patient, found from tags."""
    mg, mri = {}, None
    for path in sorted((raw / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.ClinicalTrialSubjectID != patient:
            continue
        if ds.SOPClassUID == DigitalMammographyXRayImageStorageForPresentation:
            mg[f"{ds.ImageLaterality}_{ds.ViewPosition}"] = path
        elif ds.ClinicalTrialTimePointID == "T0" and mri is None:
            mri = ds
    return mg, mri


def test_dicom_tags(mg_raw):
    raw, jobs = mg_raw
    patient = jobs[0]["patient"]
    files, mri = _files(raw, patient["id"])
    assert sorted(files) == ["L_CC", "L_MLO", "R_CC", "R_MLO"]
    codes = {"CC": "399162004", "MLO": "399368009"}
    for view, path in files.items():
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == DigitalMammographyXRayImageStorageForPresentation and ds.Modality == "MG"
        assert f"{ds.ImageLaterality}_{ds.ViewPosition}" == view
        assert (ds.ViewCodeSequence[0].CodeValue, ds.ViewCodeSequence[0].CodingSchemeDesignator) == (
            codes[ds.ViewPosition], "SCT")
        assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.BitsStored == 12 and ds.pixel_array.max() < 4096
        assert list(ds.PixelSpacing) == list(ds.ImagerPixelSpacing) == [PIXEL_MM, PIXEL_MM]
        assert 200 < ds.Rows < 1000 and 200 < ds.Columns < 1000  # a few hundred pixels a side at demo resolution
        assert ds.StudyDescription == "MAMMO SCREENING BILAT" and ds.StudyInstanceUID != mri.StudyInstanceUID
        assert 0 < (pd.Timestamp(mri.StudyDate) - pd.Timestamp(ds.StudyDate)).days < 30  # a few days before T0
        for keyword in ("ClinicalTrialSubjectID", "ClinicalTrialSiteID", "PatientName", "PatientID",
                        "PatientBirthDate"):  # the MRI's patient keys and PHI
            assert ds[keyword].value == mri[keyword].value
        assert ds.AccessionNumber and ds.AccessionNumber != mri.AccessionNumber


@pytest.fixture(scope="module")
def prepared(mg_raw, tmp_path_factory):
    raw, jobs = mg_raw
    out = tmp_path_factory.mktemp("prepared")
    datalist = prepare(raw, out, Options(size=16, spacing=4.0, required_visits=("T0",)), workers=1,
                       mg_size=MG_SIZE)
    return out, datalist


def test_prepare_finds_the_mass_in_the_right_breast_and_quadrant(prepared, mg_raw):
    out, datalist = prepared
    _, jobs = mg_raw
    assert datalist["mammogram_size"] == list(MG_SIZE)
    for entry, job, record in zip(datalist["training"], jobs, RECORDS):
        assert entry["id"] == job["patient"]["id"] and sorted(entry["mammograms"]) == sorted(
            f"{s}_{v}" for s, v in VIEWS)
        radius_mm = (3 * patient_anatomy(job)[0].tumour_volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
        side = record["laterality"][0].upper()
        other = "R" if side == "L" else "L"
        for view in ("CC", "MLO"):
            tumour_side = nib.load(out / entry["mammograms"][f"{side}_{view}"])
            image = tumour_side.get_fdata()
            smooth = ndimage.gaussian_filter(image, radius_mm / tumour_side.affine[0, 0] / 2)
            row = np.unravel_index(np.argmax(smooth), image.shape)[0]  # the brightest spot at the mass's scale
            half = "above" if row < _nipple_row(image > 0) else "below"
            assert half == _expected_half(record["tumour_location"], view), (entry["id"], view)
            # normalised to the mass, the tumour's breast has less bright area than the other one
            contralateral = nib.load(out / entry["mammograms"][f"{other}_{view}"]).get_fdata()
            assert (image[image > 0] > 0.7).mean() < 0.5 * (contralateral[contralateral > 0] > 0.7).mean()


def test_prepared_views_are_cropped_oriented_sized_and_normalised(prepared):
    out, datalist = prepared
    for entry in datalist["training"]:
        for view, rel in entry["mammograms"].items():
            assert rel == f"images/{entry['id']}/mg_{view}.nii.gz"
            image = nib.load(out / rel).get_fdata(dtype=np.float32)
            assert image.shape == MG_SIZE and nib.load(out / rel).get_data_dtype() == np.float32
            assert image.min() == 0.0 and image.max() == pytest.approx(1.0)
            labels, n = ndimage.label(image > 0)
            assert n == 1  # the breast only: background and the laterality marker dropped
            rows, cols = np.nonzero(image > 0)
            full_height = rows.min() <= 1 and rows.max() >= MG_SIZE[0] - 2
            full_width = cols.min() <= 1 and cols.max() >= MG_SIZE[1] - 2
            assert full_height or full_width  # cropped to the breast, which fills one dimension
            assert (image[:, 0] > 0).sum() > (image[:, -1] > 0).sum()  # chest wall on the left for L and R


def test_no_phi_of_the_mammograms_in_any_output(prepared, mg_raw):
    out, _ = prepared
    raw, _ = mg_raw
    phi = set()
    for path in (raw / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "MG":
            phi |= {str(ds.PatientName), ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate, ds.StudyInstanceUID,
                    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID}
    assert len(phi) > 20
    for path in out.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert not [value for value in phi if value.encode() in data], path.name


@pytest.fixture(scope="module")
def damaged(mg_raw, tmp_path_factory):
    """Patient 1: a view of another modality, one compressed (JPEG 2000), a follow-up film; patient 2: a view without
    view code, one with contradicting laterality tags; patient 3: only the breast the table says is
    tumour-free."""
    raw = shutil.copytree(mg_raw[0], tmp_path_factory.mktemp("damaged") / "raw")
    ids = [job["patient"]["id"] for job in mg_raw[1]]
    files = [_files(raw, pid)[0] for pid in ids]

    datasets = {(k, view): pydicom.dcmread(path) for k, f in enumerate(files[:2]) for view, path in f.items()}
    datasets[0, "L_CC"].Modality = "CR"
    datasets[0, "R_CC"].compress(JPEG2000Lossless)
    del datasets[1, "R_MLO"].ViewPosition, datasets[1, "R_MLO"].ViewCodeSequence
    datasets[1, "L_MLO"].Laterality = "R"
    for (k, view), ds in datasets.items():
        ds.save_as(files[k][view])
    follow_up = pydicom.dcmread(files[0]["R_MLO"])  # a film taken during treatment: not pre-treatment
    follow_up.StudyDate, follow_up.StudyInstanceUID = "20990101", pydicom.uid.generate_uid()
    follow_up.SOPInstanceUID = follow_up.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    follow_up.save_as(files[0]["R_MLO"].with_name("follow_up.dcm"))
    files[2]["L_CC"].unlink()
    files[2]["L_MLO"].unlink()
    schema = preset("synthetic")
    if "laterality" not in {f.name for f in schema.fields}:
        laterality = Field("laterality", "rhpc", "category", "laterality", levels={"left": (), "right": ()},
                           optional=True)
        schema = dataclasses.replace(schema, fields=schema.fields + (laterality,))
    out = raw.parent / "out"
    datalist = prepare(raw, out, Options(size=16, spacing=4.0, required_visits=("T0",)), schema=schema)
    return ids, datalist, pd.read_csv(out / "exclusions.csv", keep_default_na=False)


def test_bad_mammograms_are_excluded_with_a_reason(damaged):
    ids, datalist, exclusions = damaged
    rows = {(r.id, r.visit): r.reason for r in exclusions.itertuples()}
    assert rows == {
        (ids[0], "MG L_CC"): "not a mammogram (modality is not MG)",
        (ids[0], "MG"): "1 image(s) taken after the first MRI (not pre-treatment)",
        (ids[1], "MG R_?"): "no CC or MLO view code",
        (ids[1], "MG"): "contradicting laterality tags (ImageLaterality, Laterality)",
        (ids[2], "MG R_CC"): "laterality contradicts the clinical table: no view of the left breast, which has the tumour",
        (ids[2], "MG R_MLO"): "laterality contradicts the clinical table: no view of the left breast, which has the tumour",
    }
    entries = {e["id"]: e for e in datalist["training"]}
    assert set(entries) == set(ids)  # the MRI goes on
    assert sorted(entries[ids[0]]["mammograms"]) == ["L_MLO", "R_CC", "R_MLO"]  # JPEG 2000 decoded
    assert sorted(entries[ids[1]]["mammograms"]) == ["L_CC", "R_CC"]
    assert "mammograms" not in entries[ids[2]]



def test_breast_segmentation_ignores_a_small_saturated_marker():
    """A dense, small breast and a burned-in label at full scale (as rendered for two views of the
    default cohort): the threshold on the raw image fell between breast and label."""
    image = np.full((417, 333), 41.0)
    rows, cols = np.ogrid[:417, :333]
    breast = ((rows - 208) / 110.0) ** 2 + (cols / 80.0) ** 2 <= 1  # ~8 % of the detector
    image[breast] = 560 + 40 * np.random.default_rng(0).random(breast.sum())
    image[20:40, 250:285] = 3800.0  # ~0.5 %
    mask = breast_mask(image)
    assert mask[breast].mean() > 0.95 and not mask[20:40, 250:285].any()
