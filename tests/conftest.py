"""Shared fixtures: one tiny synthetic raw cohort per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from preprocessing.schema import preset
from preprocessing.synth import synthesize

TINY = {"patients": 6, "sites": 3, "seed": 7}


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    synthesize(raw, workers=2, **TINY)
    return raw


@pytest.fixture
def raw_copy(tiny_raw, tmp_path) -> Path:
    """A private copy of the tiny raw cohort that a test may damage."""
    return Path(shutil.copytree(tiny_raw, tmp_path / "raw"))


def dicom_files(raw: Path, patient: str, visit: str | None = None) -> list[Path]:
    """Files of one patient (and visit), found from tags as the pipeline does."""
    found = []
    for path in sorted((raw / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.ClinicalTrialSubjectID == patient and (visit is None or ds.ClinicalTrialTimePointID == visit):
            found.append(path)
    return found


# A prepared cohort in the form `python -m preprocessing prepare` writes, built directly from
# random volumes (no DICOM), small enough for 1-epoch bundle runs: 3 folds x 6 patients, 16^3.
FAKE_FOLDS, FAKE_PER_FOLD, FAKE_SIZE = 3, 6, 16


def write_fake_prepared(root: Path, seed: int = 0) -> Path:
    import json

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    races = ("American Indian or Alaska Native", "Asian", "Black or African American",
             "Native Hawaiian or Other Pacific Islander", "White")
    entries = []
    for n in range(FAKE_FOLDS * FAKE_PER_FOLD):
        pid, label = f"FAKE{n:03d}", n % 2
        entry = {"id": pid, "site": f"S0{n % 3 + 1}", "label": label, "fold": n // FAKE_PER_FOLD}
        entry["ftv_ml"] = {}
        for k, visit in enumerate(("T0", "T1", "T2")):
            volume = rng.normal(20, 30, (FAKE_SIZE,) * 3 + (4,)).astype(np.float32)
            volume[..., 2] = 0
            side = 4 - k * label + int(rng.integers(0, 2))  # responders' tumours shrink
            volume[6:6 + side, 6:6 + side, 6:6 + side, 2] = 1
            rel = f"images/{pid}/{visit}.nii.gz"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(volume, np.diag([-2.0, -2.0, 2.0, 1.0])), root / rel)
            entry[visit] = rel
            entry["ftv_ml"][visit] = side**3 * 0.008  # 2 mm voxels
        clinical = {"agents": ["Paclitaxel"] + ["Pembrolizumab"] * (n % 3 == 0)}
        clinical.update(age=int(30 + 2 * n), race=races[n % 5],
                        ethnicity=("Hispanic or Latino", "Not Hispanic or Latino")[n % 2],
                        BluePrint=("Basal", "HER2", "Luminal")[n % 3], HR=n % 2, HER2=(n // 2) % 2,
                        MammaPrint=1, DRD=n % 3 == 0, immune=0, arm=("control", "pembrolizumab")[n % 3 == 0])
        clinical["DRD"] = int(clinical["DRD"])
        entry["clinical"] = clinical
        entries.append(entry)
    datalist = {"channels": ["pe_early", "pe_late", "ftv_mask", "ser"], "visits": ["T0", "T1", "T2"],
                "num_folds": FAKE_FOLDS, "clinical_fields": preset("synthetic").field_record(),
                "numTraining": len(entries), "training": entries}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return root


@pytest.fixture(scope="session")
def fake_prepared(tmp_path_factory) -> Path:
    return write_fake_prepared(tmp_path_factory.mktemp("prepared"))
