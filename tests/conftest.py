"""Shared fixtures: one tiny synthetic raw cohort per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

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
