"""MONAI Label in the hospital set-up: studies from a real PACS over DICOMweb, labels saved back as DICOM SEG.

One real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``, loopback, the fixture of ``test_pacs.py``) holds one
series per bundle, of the bundle's modality (CT for CT bundles, a DX radiograph for the X-ray bundle, MR otherwise:
the bundle's own first inference image written as DICOM). One real MONAI Label server (its own venv, the fixture of
``test_monailabel.py``) serves every bundle, with random weights, from ``--studies http://127.0.0.1:<port>/dicom-web``.
Per bundle:

1. the server lists the series (QIDO-RS; MONAI Label alone lists CT only);
2. ``POST /infer/<bundle>?image=<SeriesInstanceUID>&output=image`` (MONAI Label fetches the series with WADO-RS and
   converts it to NIfTI; the bundle's own inference workflow runs on it, with the bundle's declared request
   parameters: LViT's report sentence, UniverSeg's server-side support set by name) returns a label of the series'
   grid with the bundle's label values;
3. ``PUT /datastore/label?image=<SeriesInstanceUID>&tag=final`` with that label stores a DICOM SEG in the study
   (STOW-RS; written by this project's highdicom writer, since MONAI Label's dcmqi/pydicom-seg conversion is not
   usable in its venv), which, read back from Orthanc, references the series, names the bundle's labels and has
   the label's frames;
4. for the first bundle, ``output=dicom_seg`` returns such a SEG directly.

Skips without Orthanc or the venv's package source, except under ``CI=true`` (as the tests it builds on); every wait
is bounded.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, bundle_names, check_run
from test_monailabel import Server, _multipart, _prepare, monailabel_python  # noqa: F401 - a fixture
from test_pacs import _pacs, orthanc  # noqa: F401 - a fixture

sys.path.insert(0, str(REPO / "tools" / "monailabel_app"))
import bundle_config  # noqa: E402

pytestmark = pytest.mark.slow

BUNDLES = bundle_names()
APP = REPO / "tools" / "monailabel_app"
REQUEST_TIMEOUT = 600


def _modality(bundle: Path) -> str:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    modality = str(meta["network_data_format"]["inputs"]["image"].get("modality", "")).upper()
    return {"CT": "CT", "XRAY": "DX", "X-RAY": "DX", "CR": "DX", "DX": "DX"}.get(modality, "MR")


def write_radiograph(image_file: Path, out_dir: Path) -> Path:
    """A 2D image file (PNG) as one DX instance (Digital X-Ray for presentation, 12-bit, no plane geometry)."""
    import datetime

    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    grey = np.asarray(Image.open(image_file).convert("L"), dtype=np.uint16) * 16  # rows x columns, 12 bits
    dx_storage = "1.2.840.10008.5.1.4.1.1.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = dx_storage, generate_uid()
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = dx_storage, meta.MediaStorageSOPInstanceUID
    today = datetime.date.today().strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality, ds.PresentationIntentType, ds.ImageType = "DX", "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Radiograph", "SYNTHCXR", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName, ds.Manufacturer = "1", "", "", "synthetic"
    ds.SeriesNumber, ds.InstanceNumber, ds.PatientOrientation, ds.BodyPartExamined = 1, 1, ["L", "F"], "CHEST"
    ds.SeriesDescription = "synthetic chest radiograph"
    ds.ImagerPixelSpacing = ds.PixelSpacing = ["0.2", "0.2"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(grey.shape[0]), int(grey.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(grey).tobytes()
    out_dir.mkdir(parents=True)
    path = out_dir / "radiograph.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _write_series(name: str, bundle: Path, sample: Path, out_dir: Path) -> tuple[str, str]:
    import pydicom

    from custom_components.dicom import write_dicom_series

    modality = _modality(bundle)
    if modality == "DX":
        first = write_radiograph(sample, out_dir)
    else:
        first = write_dicom_series(sample, out_dir, modality=modality, series_description=f"{name} sample")[0]
    ds = pydicom.dcmread(first)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


@pytest.fixture(scope="module")
def pacs_server(monailabel_python, orthanc, tmp_path_factory):  # noqa: F811 - the imported fixtures
    """Every bundle (random weights) served by one MONAI Label server reading the test Orthanc over DICOMweb."""
    root = tmp_path_factory.mktemp("monailabel_pacs")
    app = Path(shutil.copytree(APP, root / "app", ignore=shutil.ignore_patterns("__pycache__", "model", "logs")))
    (app / "model").mkdir()
    cases = {}
    for name in BUNDLES:
        prep = _prepare(name, root / name)  # bundle copy with random weights, its data, the sample and request params
        bundle = Path(shutil.move(str(prep["bundle"]), str(app / "model" / name)))
        series_dir = root / name / "series"
        study, series = _write_series(name, bundle, prep["study"], series_dir)
        check_run(_pacs("store", "--server", orthanc.web, str(series_dir)))
        cases[name] = {"bundle": bundle, "series_dir": series_dir, "study": study, "series": series,
                       "params": prep["params"]}
    with pytest.MonkeyPatch.context() as mp:  # the server's environment, read when it starts
        mp.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(root / "dicomweb_cache"))
        mp.setenv("MONAILABEL_SEG_PYTHON", sys.executable)  # the project's python: highdicom, pydicom 3
        mp.delenv("MONAI_LABEL_DICOMWEB_SEARCH_FILTER", raising=False)
        server = Server(monailabel_python, app, orthanc.web, ",".join(BUNDLES), root / "server.log")
    try:
        info = server.wait_ready()
        print(f"MONAI Label on DICOMweb ready in {time.time() - server.started:.1f} s")
        yield {"server": server, "info": info, "cases": cases, "orthanc": orthanc, "root": root}
    finally:
        server.stop()


def test_server_lists_the_pacs_image_series(pacs_server):
    server = pacs_server["server"]
    assert sorted(pacs_server["info"]["models"]) == sorted(BUNDLES)
    status, body = server.request("GET", "/datastore/?output=stats", timeout=60)
    assert status == 200, body[:2000]
    assert json.loads(body)["total"] == len(BUNDLES), body  # every modality's series; no SEG


def _infer(server, name: str, case: dict, output: str, extra: dict | None = None):
    query = urllib.parse.urlencode({"image": case["series"], "output": output})
    body = urllib.parse.urlencode({"params": json.dumps({**case["params"], **(extra or {})})}).encode()
    return server.request("POST", f"/infer/{name}?{query}", data=body, timeout=REQUEST_TIMEOUT,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})


def _seg_frames(seg_file: Path, series_dir: Path) -> tuple[np.ndarray, set, dict]:
    import highdicom as hd

    from custom_components.dicom import read_dicom_seg

    seg = hd.seg.segread(str(seg_file))
    referenced = {str(s) for _, s, _ in seg.get_source_image_uids()}
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    return read_dicom_seg(seg_file, series_dir), referenced, labels


def _as_frames(label: np.ndarray) -> np.ndarray:
    """A label map (X, Y[, Z]) as (Z, rows, cols) frames, the order of the series (ITK)."""
    label = np.round(label).astype(np.int64).squeeze()
    label = label.reshape(label.shape[:3] + (1,) * (3 - label.ndim))
    return np.transpose(label, (2, 1, 0))


@pytest.mark.parametrize("name", BUNDLES)
def test_infer_on_pacs_series_then_final_label_stored_as_seg(pacs_server, name):
    from dicomweb_client.api import DICOMwebClient
    from monai.transforms import LoadImage

    from custom_components.dicom import read_dicom_series
    from custom_components.dicom.seg import label_names_from_metadata

    server, case, root = pacs_server["server"], pacs_server["cases"][name], pacs_server["root"]
    start = time.time()
    status, content = _infer(server, name, case, "image")
    print(f"{name}: inference on the PACS series took {time.time() - start:.1f} s")
    assert status == 200, f"{status}: {content[:2000]!r}\n{server.tail()}"
    label_file = root / name / "label_from_server.nii.gz"
    label_file.write_bytes(content)
    label = np.asarray(LoadImage(image_only=True)(str(label_file)))
    frames = _as_frames(label)
    datasets = read_dicom_series(case["series_dir"])
    assert frames.shape == (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), frames.shape
    values = set(np.unique(frames).tolist())
    assert values <= set(bundle_config.label_map(case["bundle"])), values

    # the annotator's final label: the prediction (random weights: maybe empty) with a block of the last label added
    import nibabel as nib

    returned = nib.load(str(label_file))
    corrected = np.asarray(returned.dataobj).astype(np.uint8)
    block = tuple(slice(s // 4, max(s // 4 + 1, s // 2)) for s in corrected.shape)
    corrected[block] = max(bundle_config.label_map(case["bundle"]))
    final_file = root / name / "final_label.nii.gz"
    nib.save(nib.Nifti1Image(corrected, returned.affine, returned.header), str(final_file))
    frames = _as_frames(corrected)
    body, ctype = _multipart({"params": json.dumps({"model": name})}, {"label": final_file})
    query = urllib.parse.urlencode({"image": case["series"], "tag": "final"})
    status, content = server.request("PUT", f"/datastore/label?{query}", data=body, headers={"Content-Type": ctype},
                                     timeout=REQUEST_TIMEOUT)
    assert status == 200, f"{status}: {content[:2000]!r}\n{server.tail()}"

    client = DICOMwebClient(url=pacs_server["orthanc"].web)
    segs = client.search_for_series(case["study"], search_filters={"Modality": "SEG"})
    assert len(segs) == 1, segs
    (seg_ds,) = client.retrieve_series(case["study"], segs[0]["0020000E"]["Value"][0])
    seg_file = root / name / "seg_from_pacs.dcm"
    seg_ds.save_as(seg_file, enforce_file_format=True)
    seg_frames, referenced, segment_labels = _seg_frames(seg_file, case["series_dir"])
    assert referenced == {case["series"]}
    class_names = json.loads((case["bundle"] / "configs" / "inference.json").read_text()).get("class_names")
    names = label_names_from_metadata(case["bundle"] / "configs" / "metadata.json", class_names)
    assert all(segment_labels[v] == n[:64] for v, n in names.items()), (segment_labels, names)
    assert seg_frames.max() == max(bundle_config.label_map(case["bundle"])), "the added block is in the SEG"
    np.testing.assert_array_equal(seg_frames, frames)


def test_infer_returns_dicom_seg(pacs_server):
    """``output=dicom_seg`` (what DICOM viewers ask for): the SEG of the inference, by this project's writer."""
    import highdicom as hd

    name = BUNDLES[0]
    server, case, root = pacs_server["server"], pacs_server["cases"][name], pacs_server["root"]
    label_info = [{"name": n} for v, n in sorted(bundle_config.label_map(case["bundle"]).items()) if v]
    status, content = _infer(server, name, case, "dicom_seg", {"label_info": label_info})
    assert status == 200, f"{status}: {content[:2000]!r}\n{server.tail()}"
    seg_file = root / "returned_seg.dcm"
    seg_file.write_bytes(content)
    seg = hd.seg.segread(str(seg_file))
    assert {str(s) for _, s, _ in seg.get_source_image_uids()} == {case["series"]}
    assert [str(d.SegmentLabel) for d in seg.SegmentSequence][: len(label_info)] == [i["name"] for i in label_info]
