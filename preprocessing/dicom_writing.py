"""DICOM writing shared by the synthetic cohorts' generators (MRI, published layout, mammograms)."""

from __future__ import annotations

import hashlib

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def dicom_uid(*parts) -> str:
    """A UID determined by ``parts`` (reruns write the same files)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def opaque_name(*parts) -> str:
    """A folder or file name that carries no meaning (the preprocessing must not read names)."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:10]


def new_dataset(sop_class: str) -> Dataset:
    """An empty dataset of ``sop_class`` with its file meta (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    return ds
