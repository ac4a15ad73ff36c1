"""Every transfer syntax hospital exports use decodes to the stored 16-bit values exactly."""

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from test_discovery import discover, uid, write_series

from preprocessing.dicom_index import select_phases
from preprocessing.volume import read_phase


def _gdcm_jpeg_lossless_sv1(path):
    """pydicom has no JPEG Lossless encoder; GDCM (python-gdcm, tests only) writes one."""
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def _encode(path, syntax):
    if syntax == JPEGLosslessSV1:
        return _gdcm_jpeg_lossless_sv1(path)
    ds = pydicom.dcmread(path)
    if syntax in (DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax  # native pixel data; pydicom encodes the dataset on save
    else:
        ds.compress(syntax)  # RLE: pylibjpeg-rle; JPEG-LS: pyjpegls; JPEG 2000: pylibjpeg-openjpeg
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, RLELossless,
                                    DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=lambda s: s.name)
def test_transfer_syntax_decodes_exactly(tmp_path, syntax):
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 60000, 64 * 48).reshape(64, 48)  # the full 16-bit range, not just 12 bits
    data = (ramp + rng.integers(0, 5000, (3, 4, 64, 48))).astype(np.uint16)
    paths = write_series(tmp_path / "dce", data, lambda k: {"TemporalPositionIdentifier": k + 1},
                         PatientID="P1", StudyInstanceUID=uid("t"), SeriesInstanceUID=uid("t", 1), StudyDate="20200101")
    for path in paths:
        _encode(path, syntax)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    if syntax.is_compressed:  # a decoder that setup.cfg installs, not GDCM (here only to encode)
        assert set(get_decoder(syntax).available_plugins) - {"gdcm"}
    patients, skipped = discover(tmp_path)
    assert skipped == []
    for phase, k in zip(select_phases(list(patients["P1"]["T0"].phases.values()))[:3], (0, 1, 2)):
        np.testing.assert_array_equal(read_phase(phase)[0], data[k])
