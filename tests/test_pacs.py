"""The hospital path of every bundle: DICOM series in, NIfTI prediction and DICOM SEG out, through a real PACS.

For each folder of ``bundles/`` (bundles added later are covered without changes here):

1. a copy of the bundle generates its own synthetic data (its inference workflow's ``initialize``, with
   ``quick.json`` and random weights of its ``network_def``, conftest's ``copy_bundle``/``write_random_weights``); the first inference item is the sample, and its
   other keys that are top-level config keys (a report sentence ``text``) become config overrides;
2. the sample is written as a DICOM series (CT when the bundle's input modality is CT, else MR);
3. ``python -m monai.bundle run`` on the series folder writes a prediction whose affine and grid are those of
   the series read with ITK;
4. a real Orthanc (Debian packages ``orthanc``, ``orthanc-dicomweb``) on loopback receives the series; then
   ``tools/pacs.py run`` retrieves it, runs the bundle, writes the SEG and stores it; the SEG read back from
   Orthanc (highdicom) has the frames of the NIfTI prediction of step 3, the bundle's label names, references
   the series, and ``dciodvfy`` (dicom3tools) reports no error in it;
5. the same over DIMSE (C-STORE, C-FIND, C-GET, C-STORE with pynetdicom) for the first bundle; failures (study not
   found, inference failing, unknown calling AE title) exit with one clear line and store nothing.

A bundle whose metadata.json says ``"dicom": {"series_input": false, "reason": "..."}`` is skipped with that reason.
The Orthanc tests skip when the ``Orthanc`` binary is absent, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, bundle_env, bundle_names, check_run, copy_bundle, run_bundle, write_random_weights

pytestmark = pytest.mark.slow

BUNDLES = bundle_names()
PACS = REPO / "tools" / "pacs.py"
DICOMWEB_PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so",
                    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")


def _metadata(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / "configs" / "metadata.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prepared:
    """A bundle copy with random weights and its synthetic data, one sample as a DICOM series, and the NIfTI
    prediction of the bundle's normal inference on that series folder."""

    def __init__(self, name: str, root: Path) -> None:
        from monai.bundle import ConfigParser, ConfigWorkflow

        from custom_components.dicom import write_dicom_series

        source = REPO / "bundles" / name
        support = _metadata(source).get("dicom", {})
        if support.get("series_input") is False:
            pytest.skip(f"{name}: metadata.json declares no DICOM series input: {support.get('reason', '(no reason)')}")
        self.name, self.bundle = name, copy_bundle(name, root)
        cfg = self.bundle / "configs"
        self.configs = [cfg / "inference.json", cfg / "quick.json"]
        write_random_weights(self.bundle)
        workflow = ConfigWorkflow(config_file=[str(c) for c in self.configs], meta_file=str(cfg / "metadata.json"),
                                  logging_file=False, workflow_type="infer", bundle_root=str(self.bundle))
        workflow.initialize()
        item = workflow.parser.get_parsed_content("datalist")[0]
        top_level = set(ConfigParser.load_config_files([str(c) for c in self.configs]))
        self.overrides = {k: v for k, v in item.items() if k != "image" and k in top_level}
        self.source_image = item["image"]
        modality = _metadata(source)["network_data_format"]["inputs"]["image"].get("modality", "")
        self.modality = "CT" if str(modality).upper() == "CT" else "MR"
        self.series = root / f"{name}_series"
        write_dicom_series(self.source_image, self.series, modality=self.modality,
                           series_description=f"{name} synthetic sample")
        import pydicom

        first = pydicom.dcmread(next(self.series.iterdir()))
        self.study_uid, self.series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        self.pred_dir = root / f"{name}_pred"
        check_run(run_bundle(self.configs, "--bundle_root", str(self.bundle), "--input", str(self.series),
                             "--output_dir", str(self.pred_dir), *self.override_args()))
        predictions = sorted(self.pred_dir.glob("*.nii*"))
        assert len(predictions) == 1, predictions
        self.prediction = predictions[0]

    def override_args(self) -> list[str]:
        args = []
        for key, value in self.overrides.items():
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return args


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache: dict[str, Prepared] = {}

    def get(name: str) -> Prepared:
        if name not in cache:
            cache[name] = Prepared(name, tmp_path_factory.mktemp(f"dicom_{name}"))
        return cache[name]

    return get


@pytest.mark.parametrize("name", BUNDLES)
def test_dicom_series_inference_keeps_geometry(name, prepared):
    from monai.transforms import LoadImage

    from custom_components.dicom import series_geometry

    p = prepared(name)
    series = LoadImage(image_only=True)(str(p.series))  # the ITK reader (a folder is a DICOM series)
    pred = nib.load(str(p.prediction))
    shape = tuple(pred.shape) + (1,) * (3 - len(pred.shape))  # a 2D bundle writes a 2D map for a one-image series
    assert shape == tuple(series.shape), (pred.shape, series.shape)
    np.testing.assert_allclose(pred.affine, np.asarray(series.affine), atol=1e-4)
    source = LoadImage(image_only=True)(p.source_image)
    if source.ndim == 3 and source.shape == series.shape:  # a 3D sample: the series keeps its patient geometry
        affine, array = np.asarray(source.affine, dtype=float), np.asarray(source)
        if series_geometry(affine, array.shape[2])["flip"]:  # left-handed: same voxels, slices stored reversed
            flip = np.eye(4)
            flip[2, 2], flip[2, 3] = -1.0, array.shape[2] - 1.0
            affine, array = affine @ flip, array[:, :, ::-1]
        np.testing.assert_allclose(np.asarray(series.affine), affine, atol=1e-3)
        if p.modality == "CT":
            assert float(np.abs(np.asarray(series) - array).max()) <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# a real PACS
# ---------------------------------------------------------------------------------------------------------------
class Orthanc:
    """Addresses of the test Orthanc: ``web`` (DICOMweb root) and ``dimse`` (``dimse://AET@host:port``)."""

    def __init__(self, web: str, dimse: str) -> None:
        self.web, self.dimse = web, dimse


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """An Orthanc started for this module (loopback, free ports, temporary storage, DICOMweb plugin, this tool's AE
    title MONAIBUNDLE registered as a modality so that it may C-FIND, C-GET and C-STORE)."""
    exe = shutil.which("Orthanc")
    if exe is None:
        message = "the Orthanc binary is not installed (apt-get install -y orthanc orthanc-dicomweb dicom3tools)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    plugin = next((p for p in DICOMWEB_PLUGINS if Path(p).is_file()), None)
    assert plugin is not None, f"Orthanc is installed but its DICOMweb plugin is not (looked in {DICOMWEB_PLUGINS})"
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "test-pacs", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "TESTPACS",
        "DicomModalities": {"monaibundle": {"AET": "MONAIBUNDLE", "Host": "127.0.0.1", "Port": _free_port()}},
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 4,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")
    proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    import requests

    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{url}/dicom-web/studies", timeout=2).status_code == 200:
                break
        except requests.exceptions.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("Orthanc did not start:\n" + (root / "orthanc.log").read_text()[-3000:])
        time.sleep(0.5)
    yield Orthanc(f"{url}/dicom-web", f"dimse://TESTPACS@127.0.0.1:{dicom_port}")
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _pacs(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PACS), *args], cwd=REPO, env=bundle_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("name", BUNDLES)
def test_pacs_roundtrip_stores_seg_equal_to_prediction(name, prepared, orthanc, tmp_path):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient
    from monai.bundle import ConfigParser

    from custom_components.dicom.seg import label_names_from_metadata, read_dicom_seg, segment_code

    p = prepared(name)
    check_run(_pacs("store", "--server", orthanc.web, str(p.series)))
    out = check_run(_pacs("run", "--server", orthanc.web, "--study", p.study_uid, "--bundle", str(p.bundle),
                          "--config_file", "configs/quick.json", "--workdir", str(tmp_path / "work"),
                          *p.override_args()))
    assert "stored SEG series" in out, out[-3000:]

    client = DICOMwebClient(url=orthanc.web)
    segs = client.search_for_series(p.study_uid, search_filters={"Modality": "SEG"})
    assert len(segs) == 1, segs
    seg_series = segs[0]["0020000E"]["Value"][0]
    datasets = client.retrieve_series(p.study_uid, seg_series)
    assert len(datasets) == 1
    seg_file = tmp_path / "seg_from_pacs.dcm"
    datasets[0].save_as(seg_file, enforce_file_format=True)

    seg = hd.seg.segread(str(seg_file))
    assert {str(s) for _, s, _ in seg.get_source_image_uids()} == {p.series_uid}
    class_names = ConfigParser.load_config_files([str(c) for c in p.configs]).get("class_names")
    names = label_names_from_metadata(p.bundle / "configs" / "metadata.json", class_names)
    labels = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    assert all(labels[v] == n[:64] for v, n in names.items()), (labels, names)
    for d in seg.SegmentSequence:  # standard codes of the names (generic Tissue where there is none)
        assert d.SegmentedPropertyTypeCodeSequence[0].CodeValue == segment_code(str(d.SegmentLabel)).type.value

    pred = np.round(np.asanyarray(nib.load(str(p.prediction)).dataobj)).astype(np.int64)
    pred = pred.reshape(pred.shape[:3] + (1,) * (3 - pred.ndim))
    frames = read_dicom_seg(seg_file, p.series)  # (slices, rows, cols), slices in ITK order
    np.testing.assert_array_equal(frames, np.transpose(pred, (2, 1, 0)))
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_file) == []


def test_pacs_study_not_found(orthanc):
    proc = _pacs("run", "--server", orthanc.web, "--study", "1.2.3.4.5.6.7.8.9", "--bundle",
                 str(REPO / "bundles" / BUNDLES[0]))
    assert proc.returncode == 1
    assert "study not found" in proc.stderr, proc.stderr[-2000:]


def test_pacs_failed_inference_stores_nothing(orthanc, tmp_path):
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from custom_components.dicom import write_dicom_series

    files = write_dicom_series(np.zeros((16, 16, 3)), tmp_path / "series", modality="CT")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    check_run(_pacs("store", "--server", orthanc.web, str(tmp_path / "series")))
    proc = _pacs("run", "--server", orthanc.web, "--study", study, "--bundle", str(REPO / "bundles" / BUNDLES[0]),
                 "--ckpt_path", str(tmp_path / "no_such_weights.pt"), "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 1 and "inference failed" in proc.stderr, proc.stderr[-2000:]
    assert "no_such_weights.pt" in proc.stderr  # the bundle's own message naming the missing file
    assert DICOMwebClient(url=orthanc.web).search_for_series(study, search_filters={"Modality": "SEG"}) == []
    assert not (tmp_path / "work" / "seg.dcm").exists()


def test_pacs_dimse_roundtrip(prepared, orthanc, tmp_path):
    """The same path over DIMSE (C-STORE the series, C-FIND, C-GET, C-STORE the SEG) for the first bundle: a new
    study of the same sample image gives the SEG of the same prediction."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from custom_components.dicom import read_dicom_seg, write_dicom_series

    p = prepared(BUNDLES[0])
    files = write_dicom_series(p.source_image, tmp_path / "series", modality=p.modality)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    check_run(_pacs("store", "--server", orthanc.dimse, str(tmp_path / "series")))
    out = check_run(_pacs("run", "--server", orthanc.dimse, "--study", study, "--bundle", str(p.bundle),
                          "--config_file", "configs/quick.json", "--workdir", str(tmp_path / "work"),
                          *p.override_args()))
    assert "stored SEG series" in out, out[-3000:]
    client = DICOMwebClient(url=orthanc.web)
    segs = client.search_for_series(study, search_filters={"Modality": "SEG"})
    assert len(segs) == 1, segs
    seg = client.retrieve_series(study, segs[0]["0020000E"]["Value"][0])[0]
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    pred = np.round(np.asanyarray(nib.load(str(p.prediction)).dataobj)).astype(np.int64)
    pred = pred.reshape(pred.shape[:3] + (1,) * (3 - pred.ndim))
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "seg.dcm", tmp_path / "series"), np.transpose(pred, (2, 1, 0)))


def test_pacs_dimse_unknown_calling_aet_is_refused(orthanc):
    proc = _pacs("studies", "--server", orthanc.dimse, "--aet", "STRANGER")
    assert proc.returncode == 1 and "calling AE title STRANGER" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
