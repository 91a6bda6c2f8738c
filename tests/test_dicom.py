"""DICOM writers: synthetic series (geometry and values through ITK) and DICOM SEG (segments, codes, frames,
references), bad input, and the PACS tool's error for an unreachable server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from conftest import REPO, bundle_env
from custom_components.dicom import DicomInputError, read_dicom_series, write_dicom_series
from custom_components.dicom.seg import label_names_from_metadata, read_dicom_seg, segment_code, write_dicom_seg

AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1.0]])


def _load(path):
    from monai.transforms import LoadImage

    return LoadImage(image_only=True)(str(path))  # a folder: the ITK reader, as the bundles read DICOM series


@pytest.fixture
def ct(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.uniform(-1024, 2000, (20, 16, 6))  # HU, not integers
    write_dicom_series(volume, tmp_path / "ct", affine=AFFINE, modality="CT")
    return volume, tmp_path / "ct"


def test_series_round_trip_through_itk_keeps_geometry_and_hu(ct):
    volume, folder = ct
    img = _load(folder)
    assert tuple(img.shape) == volume.shape
    np.testing.assert_allclose(np.asarray(img.affine), AFFINE, atol=1e-4)
    assert float(np.abs(np.asarray(img) - volume).max()) <= 1.0
    first = read_dicom_series(folder)[0]
    assert first.Modality == "CT" and float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == -1024
    assert [float(v) for v in first.PixelSpacing] == [0.7, 0.8]
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], [10.0, -20.0, -30.0])  # LPS
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient], [-1, 0, 0, 0, -1, 0])


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_series_images_pass_dciodvfy(modality, tmp_path):
    files = write_dicom_series(np.random.default_rng(0).uniform(0, 1, (8, 6, 3)), tmp_path / "s", modality=modality)
    report = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True)
    assert not [x for x in (report.stdout + report.stderr).splitlines() if x.startswith("Error")], report.stderr


def test_series_oblique_and_left_handed_affines(tmp_path):
    rng = np.random.default_rng(1)
    volume = rng.uniform(0, 1, (12, 10, 5))
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rot @ np.diag([1.2, 0.9, 3.0])
    oblique[:3, 3] = [5, -7, 11]
    write_dicom_series(volume, tmp_path / "obl", affine=oblique, modality="MR")
    img = _load(tmp_path / "obl")
    np.testing.assert_allclose(np.asarray(img.affine), oblique, atol=1e-4)
    np.testing.assert_allclose(np.asarray(img), volume, atol=1e-4)  # rescale slope spreads [0, 1] over 16 bits

    left = AFFINE.copy()
    left[2, 2] = -2.5  # slices run against row x column: written in reverse, same physical voxels
    write_dicom_series(volume, tmp_path / "left", affine=left, modality="MR")
    img = _load(tmp_path / "left")
    flipped = left @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 4], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(np.asarray(img.affine), flipped, atol=1e-4)
    np.testing.assert_allclose(np.asarray(img), volume[:, :, ::-1], atol=1e-4)


def test_series_bad_input(tmp_path):
    with pytest.raises(DicomInputError, match="not found"):
        write_dicom_series(tmp_path / "missing.nii.gz", tmp_path / "out")
    with pytest.raises(DicomInputError, match="modality"):
        write_dicom_series(np.zeros((4, 4, 2)), tmp_path / "out", modality="US")
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(DicomInputError, match="orthogonal"):
        write_dicom_series(np.zeros((4, 4, 2)), tmp_path / "out", affine=sheared)
    with pytest.raises(DicomInputError, match="NaN"):
        write_dicom_series(np.full((4, 4, 2), np.nan), tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(DicomInputError, match="not an empty folder"):
        write_dicom_series(np.zeros((4, 4, 2)), tmp_path / "full")
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(DicomInputError, match="no DICOM files"):
        read_dicom_series(tmp_path / "full")


def test_segment_codes_are_standard_snomed():
    liver = segment_code("Liver")
    assert (liver[1].value, liver[1].scheme_designator) == ("10200004", "SCT")
    kind, side = segment_code("left_kidney")[1:3]
    assert kind.value == "64033007" and side.value == "7771000"  # Kidney + Left modifier
    assert segment_code("Right Adrenal Gland")[2].value == "24028007"
    assert segment_code("myo")[1].value == "49848007"  # left ventricle myocardium
    assert segment_code("lv")[1].value == "87878005" and segment_code("rv")[1].value == "53085002"
    assert segment_code("left_atrium")[1].value == "82471001"
    assert segment_code("portal vein and splenic vein")[1].value == "32764006"
    infection = segment_code("lung infection")
    assert infection[1].meaning == "Lesion" and infection[3].meaning == "Lung"
    unknown = segment_code("something new")
    assert unknown[0].meaning == unknown[1].meaning == "Tissue"


def test_seg_writer_segments_frames_references(ct, tmp_path):
    import highdicom as hd

    volume, folder = ct
    img = _load(folder)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[2:8, 3:9, 1:4] = 1
    labels[10:15, 5:12, 2:5] = 3
    names = {1: "liver", 2: "left_kidney", 3: "spleen", 4: "aorta"}
    out = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", names, affine=np.asarray(img.affine),
                          algorithm_name="test bundle", algorithm_version="9.9.9")
    seg = hd.seg.segread(str(out))
    assert seg.SegmentationType == "BINARY"
    got = {int(d.SegmentNumber): (str(d.SegmentLabel), d.SegmentedPropertyTypeCodeSequence[0].CodeValue)
           for d in seg.SegmentSequence}
    assert got == {1: ("liver", "10200004"), 2: ("left_kidney", "64033007"), 3: ("spleen", "78961009"),
                   4: ("aorta", "15825003")}
    kidney = seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "test bundle"
    sources = read_dicom_series(folder)
    assert str(seg.StudyInstanceUID) == str(sources[0].StudyInstanceUID)
    assert str(seg.FrameOfReferenceUID) == str(sources[0].FrameOfReferenceUID)
    referenced = seg.get_source_image_uids()
    assert {str(s) for _, s, _ in referenced} == {str(sources[0].SeriesInstanceUID)}
    assert {str(i) for _, _, i in referenced} == {str(ds.SOPInstanceUID) for ds in sources}
    np.testing.assert_array_equal(read_dicom_seg(out, folder), np.transpose(labels, (2, 1, 0)))
    assert int(seg.NumberOfFrames) == 3 + 3  # empty frames are left out: liver on 3 slices, spleen on 3
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
        assert not [x for x in (report.stdout + report.stderr).splitlines() if x.startswith("Error")], report.stderr


def test_seg_writer_empty_prediction_and_unnamed_labels(ct, tmp_path):
    import highdicom as hd

    volume, folder = ct
    affine = np.asarray(_load(folder).affine)
    empty = write_dicom_seg(np.zeros(volume.shape, np.uint8), folder, tmp_path / "empty.dcm", {}, affine=affine)
    seg = hd.seg.segread(str(empty))
    assert len(seg.SegmentSequence) == 1 and int(seg.NumberOfFrames) == volume.shape[2]
    assert not read_dicom_seg(empty, folder).any()
    labels = np.zeros(volume.shape, np.uint8)
    labels[0:3, 0:3, 0] = 2
    seg = hd.seg.segread(str(write_dicom_seg(labels, folder, tmp_path / "two.dcm", None, affine=affine)))
    assert [str(d.SegmentLabel) for d in seg.SegmentSequence] == ["label 1", "label 2"]


def test_seg_writer_projection_image_without_plane_geometry(tmp_path):
    """A one-image series without ImagePositionPatient (an X-ray: DX, CR) gets a SEG of its one frame."""
    import highdicom as hd

    files = write_dicom_series(np.random.default_rng(0).uniform(0, 255, (40, 30)).round(), tmp_path / "dx",
                               modality="MR")
    ds = pydicom.dcmread(files[0])
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "SliceLocation", "SpacingBetweenSlices",
                "SliceThickness", "PixelSpacing"):
        delattr(ds, key)
    ds.PatientOrientation = ["L", "F"]
    ds.save_as(files[0])
    img = _load(tmp_path / "dx")
    labels = np.zeros((40, 30), np.uint8)
    labels[5:10, 3:8] = 1
    out = write_dicom_seg(labels, tmp_path / "dx", tmp_path / "seg.dcm", {1: "infection"}, affine=np.asarray(img.affine))
    np.testing.assert_array_equal(read_dicom_seg(out, tmp_path / "dx")[0], labels.T)
    assert hd.seg.segread(str(out)).SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
        assert not [x for x in (report.stdout + report.stderr).splitlines() if x.startswith("Error")], report.stderr


def test_seg_writer_bad_input(ct, tmp_path):
    volume, folder = ct
    affine = np.asarray(_load(folder).affine)
    with pytest.raises(DicomInputError, match="grid of the series"):
        write_dicom_seg(np.zeros((20, 16, 5), np.uint8), folder, tmp_path / "a.dcm", affine=affine)
    moved = affine.copy()
    moved[2, 3] += 100.0
    with pytest.raises(DicomInputError, match="matches no image"):
        write_dicom_seg(np.zeros(volume.shape, np.uint8), folder, tmp_path / "b.dcm", affine=moved)
    with pytest.raises(DicomInputError, match="label map"):
        write_dicom_seg(np.full(volume.shape, 0.5), folder, tmp_path / "c.dcm", affine=affine)
    with pytest.raises(DicomInputError, match="needs its RAS affine"):
        write_dicom_seg(np.zeros(volume.shape, np.uint8), folder, tmp_path / "d.dcm")
    with pytest.raises(DicomInputError, match="not found"):
        write_dicom_seg(tmp_path / "missing.nii.gz", folder, tmp_path / "e.dcm")
    assert not list(tmp_path.glob("*.dcm")) and not list(tmp_path.glob(".*.dcm*"))


def test_label_names_from_metadata():
    names = label_names_from_metadata(REPO / "bundles" / "levit_unet_synapse_segmentation" / "configs" / "metadata.json")
    assert names[1] == "aorta" and 0 not in names and len(names) == 8
    assert label_names_from_metadata({"dicom": {"label_names": {"1": "lesion"}}}, ["bg", "x"]) == {1: "lesion"}
    channel_def = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "infection logit"}}}}}
    assert label_names_from_metadata(channel_def) == {}  # a single-logit output names no label value
    assert label_names_from_metadata(channel_def, ["background", "infection"]) == {1: "infection"}


def test_pacs_tool_reports_unreachable_server_and_bad_address(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "pacs.py"), "studies", "--server",
                           f"http://127.0.0.1:{port}/dicom-web"], cwd=REPO, env=bundle_env(), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "unreachable" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for server, message in ((f"dimse://PACS@127.0.0.1:{port}", "unreachable"), ("ftp://x", "must be a DICOMweb URL")):
        proc = subprocess.run([sys.executable, str(REPO / "tools" / "pacs.py"), "studies", "--server", server],
                              cwd=REPO, env=bundle_env(), capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]


def test_inference_items_takes_a_dicom_series_folder(ct, tmp_path):
    from custom_components.data import inference_items

    _, folder = ct
    assert inference_items(folder) == [{"image": str(folder.resolve())}]
    shutil.copytree(folder, tmp_path / "many" / "a")
    shutil.copytree(folder, tmp_path / "many" / "b")
    assert [i["image"] for i in inference_items(tmp_path / "many")] == [
        str((tmp_path / "many" / n).resolve()) for n in ("a", "b")]
    uid_named = tmp_path / "uid_named"  # PACS exports name files by UID: found by the DICM preamble
    uid_named.mkdir()
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        shutil.copy(f, uid_named / str(ds.SOPInstanceUID))
    assert inference_items(uid_named) == [{"image": str(uid_named.resolve())}]
    mixed = tmp_path / "mixed"  # a stray file without suffix is no DICOM series
    mixed.mkdir()
    (mixed / "README").write_text("notes")
    shutil.copy(REPO / "bundles" / "levit_unet_synapse_segmentation" / "LICENSE", mixed / "LICENSE")
    with pytest.raises(FileNotFoundError, match="no image files"):
        inference_items(mixed)
