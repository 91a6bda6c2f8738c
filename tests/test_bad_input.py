"""Bad input ends every workflow and tool with a non-zero exit, one last line naming the file and what is wrong, and
nothing written (issue 12, parts 4 and 5).

One row per case. Each row builds its bad input synthetically (smallest sizes; bundles with random weights of their
quick networks), runs the bundle (``python -m monai.bundle run``, as a user does) or the tool, and returns what the
shared check needs: the process, the file the message must name, the phrase that says what is wrong, and the paths
that must not exist afterwards (the prediction folder; for a folder of inputs, also the predictions of its good
files, which a run writes before it reaches the bad one unless predictions are staged).

Part 4 rows: ``tools/pacs.py run --text '$x'`` is refused before anything is contacted, and a MONAI Label request
that sets a path key or a key its bundle does not declare is refused (``bundle_config.request_overrides``, the
app's own check, imported without starting a server).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, bundle_env, copy_bundle, run_bundle, write_random_weights

sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tools" / "monailabel_app"))

LEVIT, LVIT = "levit_unet_synapse_segmentation", "lvit_qata_covid19_segmentation"
UNIVERSEG = "universeg_fewshot_segmentation"
TEXT = ["--text", "Bilateral pulmonary infection, two infected areas."]


# ------------------------------------------------------------------------------------------------------------------
# synthetic inputs


def _nii(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return path


def _png(path: Path, array) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def _rng():
    return np.random.default_rng(0)


def _volume(shape=(20, 20, 4)):
    return (_rng().random(shape) * 200 - 100).astype(np.float32)


def _folder_with_bad_second(tmp: Path, bad_name: str, write_bad: Callable[[Path], Path], good_suffix=".nii.gz",
                            good=None) -> tuple[Path, Path]:
    """``tmp/incoming`` holding a good image sorted first (its prediction would be written first) and a bad one."""
    folder = tmp / "incoming"
    if good_suffix == ".png":
        _png(folder / f"a_good{good_suffix}", _rng().integers(0, 255, (32, 32)))
    else:
        _nii(folder / f"a_good{good_suffix}", _volume() if good is None else good)
    return folder, write_bad(folder / bad_name)


def _support(tmp: Path) -> Path:
    support = tmp / "support"
    for k in range(2):
        lab = np.zeros((24, 24), np.uint8)
        lab[4:12, 4:12] = 1
        _nii(support / "images" / f"s{k}.nii.gz", _rng().random((24, 24)).astype(np.float32))
        _nii(support / "labels" / f"s{k}.nii.gz", lab)
    return support


# ------------------------------------------------------------------------------------------------------------------
# the table


@dataclass
class Outcome:
    proc: subprocess.CompletedProcess
    names: str | None  # the file the last line must name (None: the case has no file, e.g. a refused value)
    phrase: str  # what the last line must say is wrong
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards


class Bundles:
    """Bundle copies with random weights, made once per module."""

    def __init__(self, root: Path) -> None:
        self.root, self.made = root, {}

    def __call__(self, name: str) -> Path:
        if name not in self.made:
            bundle = copy_bundle(name, self.root)
            write_random_weights(bundle)
            self.made[name] = bundle
        return self.made[name]


def _infer(bundle: Path, source: Path, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp / "predictions"
    cfg = bundle / "configs"
    proc = run_bundle([cfg / "inference.json", cfg / "quick.json"], "--bundle_root", str(bundle),
                      "--input", str(source), "--output_dir", str(out), *args, timeout=600)
    return proc, out


def nan_voxels_lvit(tmp, bundles):
    def bad(path):
        img = _rng().random((32, 32)).astype(np.float32)
        img[5, 5] = np.nan
        return _nii(path, img)

    folder, bad_file = _folder_with_bad_second(tmp, "b_nan.nii.gz", bad, good_suffix=".png")
    proc, out = _infer(bundles(LVIT), folder, tmp, *TEXT)
    return Outcome(proc, str(bad_file), "1 NaN voxel", [out])


def infinite_voxels_universeg(tmp, bundles):
    def bad(path):
        img = _rng().random((24, 24)).astype(np.float32)
        img[3, 3], img[4, 4] = np.inf, -np.inf
        return _nii(path, img)

    good = _rng().random((24, 24)).astype(np.float32)
    folder, bad_file = _folder_with_bad_second(tmp, "b_inf.nii.gz", bad, good=good)
    proc, out = _infer(bundles(UNIVERSEG), folder, tmp, "--support_dir", str(_support(tmp)))
    return Outcome(proc, str(bad_file), "2 infinite voxel", [out])


def huge_voxels_levit(tmp, bundles):
    def bad(path):
        vol = _volume()
        vol[2, 2, 2], vol[3, 3, 3] = 3e38, -3e38
        return _nii(path, vol)

    folder, bad_file = _folder_with_bad_second(tmp, "b_huge.nii.gz", bad)
    proc, out = _infer(bundles(LEVIT), folder, tmp)
    return Outcome(proc, str(bad_file), "in magnitude", [out])


def truncated_nifti_levit(tmp, bundles):
    def bad(path):
        full = _nii(tmp / "full.nii.gz", _rng().random((40, 40, 20)).astype(np.float32))
        data = full.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert nib.load(str(path)).shape == (40, 40, 20)  # the header alone looks fine
        return path

    folder, bad_file = _folder_with_bad_second(tmp, "b_truncated.nii.gz", bad)
    proc, out = _infer(bundles(LEVIT), folder, tmp)
    return Outcome(proc, str(bad_file), "truncated", [out])


def _two_series_folder(tmp: Path) -> tuple[Path, list[str]]:
    import pydicom

    from custom_components.dicom import write_dicom_series

    folder, uids = tmp / "study_folder", []
    folder.mkdir()
    for k in range(2):
        files = write_dicom_series(_volume((16, 16, 3)), tmp / f"series{k}", modality="CT",
                                   series_description=f"series {k}", series_number=k + 1)
        uids.append(str(pydicom.dcmread(files[0]).SeriesInstanceUID))
        for f in files:
            shutil.move(str(f), folder / f"s{k}_{f.name}")
    return folder, uids


def dicom_folder_with_two_series_levit(tmp, bundles):
    folder, uids = _two_series_folder(tmp)
    proc, out = _infer(bundles(LEVIT), folder, tmp)
    return Outcome(proc, str(folder), f"holds 2 DICOM series; choose one with --series", [out])


def rgb_png_to_grey_universeg(tmp, bundles):
    folder, bad_file = _folder_with_bad_second(
        tmp, "b_colour.png", lambda p: _png(p, _rng().integers(0, 255, (24, 24, 3))),
        good=_rng().random((24, 24)).astype(np.float32))
    proc, out = _infer(bundles(UNIVERSEG), folder, tmp, "--support_dir", str(_support(tmp)))
    return Outcome(proc, str(bad_file), "has 3 channels", [out])


def volume_to_lvit(tmp, bundles):
    bad_file = _nii(tmp / "incoming" / "volume.nii.gz", _rng().random((32, 32, 8)).astype(np.float32))
    proc, out = _infer(bundles(LVIT), bad_file, tmp, *TEXT)
    return Outcome(proc, str(bad_file), "expected a 2D image", [out])


def thin_volume_to_lvit(tmp, bundles):
    """Three slices look like RGB channels in the file header; the loaded image shows a 3D volume."""
    folder, bad_file = _folder_with_bad_second(
        tmp, "b_volume.nii.gz", lambda p: _nii(p, _rng().random((32, 32, 3)).astype(np.float32)), good_suffix=".png")
    proc, out = _infer(bundles(LVIT), folder, tmp, *TEXT)
    return Outcome(proc, str(bad_file), "expected a 2D image", [out])


def _lvit_training(tmp, bundles, label_name: str, write_label, training: bool = True):
    data = tmp / "qata"
    image = _png(data / "img.png", _rng().integers(0, 255, (32, 32)))
    good_label = _png(data / "good_mask.png", np.where(np.arange(32 * 32).reshape(32, 32) % 7 == 0, 255, 0))
    bad_label = write_label(data / label_name) if label_name else None
    item = {"image": "img.png", "label": bad_label.name if bad_label else "good_mask.png", "text": "One infected area."}
    good = {"image": "img.png", "label": good_label.name, "text": "One infected area."}
    (data / "dataset.json").write_text(json.dumps({"training": [item] if training else [], "validation": [good]}))
    bundle = bundles(LVIT)
    root = tmp / "run"
    cfg = bundle / "configs"
    proc = run_bundle([cfg / "train.json", cfg / "quick.json"], "--bundle_root", str(root), "--dataset_dir", str(data),
                      run_id="training", timeout=600)
    return proc, bad_label, data, root


def lvit_training_label_7(tmp, bundles):
    proc, bad, _, root = _lvit_training(tmp, bundles, "mask7.png", lambda p: _png(p, np.full((32, 32), 7)))
    return Outcome(proc, str(bad), "label values outside the accepted label values 0, 1, 255: 7", [root / "models"])


def lvit_training_fractional_label(tmp, bundles):
    proc, bad, _, root = _lvit_training(tmp, bundles, "mask_half.nii.gz",
                                        lambda p: _nii(p, np.full((32, 32), 0.5, np.float32)))
    return Outcome(proc, str(bad), "label values outside the accepted label values 0, 1, 255: 0.5", [root / "models"])


def lvit_training_empty_split(tmp, bundles):
    proc, _, data, root = _lvit_training(tmp, bundles, "", None, training=False)
    return Outcome(proc, str(data / "dataset.json"), "the 'training' split has no items", [root / "models"])


def _pacs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "pacs.py"), *args], cwd=REPO, env=bundle_env(),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def pacs_invalid_uid(tmp, bundles):
    proc = _pacs("run", "--server", "http://127.0.0.1:9/dicom-web", "--study", "1.2.03.x", "--bundle",
                 str(REPO / "bundles" / LEVIT), "--workdir", str(tmp / "work"))
    return Outcome(proc, None, "--study '1.2.03.x': not a valid DICOM UID", [tmp / "work"])


def pacs_retrieve_returns_more_instances(tmp, bundles):
    import pacs
    import pydicom

    from custom_components.dicom import write_dicom_series

    files = write_dicom_series(_volume((8, 8, 3)), tmp / "series", modality="CT")
    datasets = [pydicom.dcmread(f) for f in files]

    class Remote:  # a DIMSE/DICOMweb server whose C-GET answers with three instances of a two-instance series
        def iter_instances(self, study, series):
            yield from datasets

    record = {"SeriesInstanceUID": str(datasets[0].SeriesInstanceUID), "Modality": "CT",
              "NumberOfSeriesRelatedInstances": 2}
    out = tmp / "retrieved"
    try:
        pacs._retrieve_series(Remote(), str(datasets[0].StudyInstanceUID), record, out)
        proc = subprocess.CompletedProcess([], 0, "", "")
    except pacs.PacsError as e:
        proc = subprocess.CompletedProcess([], 1, "", f"pacs: error: {e}\n")
    return Outcome(proc, None, "returned more instances than the series has", [out])


def pacs_text_expression(tmp, bundles):
    proc = _pacs("run", "--server", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", "--bundle",
                 str(REPO / "bundles" / LVIT), "--text", "$__import__('os').system('touch pwned')",
                 "--workdir", str(tmp / "work"))
    return Outcome(proc, None, "--text: a value starting with '$' would be evaluated", [tmp / "work", REPO / "pwned"])


def _monailabel_check(bundle_name: str, request: dict) -> subprocess.CompletedProcess:
    import bundle_config as bc

    bundle = REPO / "bundles" / bundle_name
    config = bc.top_level_config(bc.config_files(bundle, "inference", quick=False))
    try:
        bc.request_overrides(config, request, bc.request_params(bundle, "infer"), bc.named_paths(bundle))
        return subprocess.CompletedProcess([], 0, "", "")
    except ValueError as e:
        return subprocess.CompletedProcess([], 1, "", f"{e}\n")


def monailabel_request_sets_path_key(tmp, bundles):
    proc = _monailabel_check(LVIT, {"model": LVIT, "image": "/x.png", "text": "One area.",
                                    "text_cache_dir": str(tmp / "written_by_request")})
    return Outcome(proc, None, "request parameter 'text_cache_dir' cannot be set by a request (it names a path",
                   [tmp / "written_by_request"])


def monailabel_request_sets_support_folder(tmp, bundles):
    proc = _monailabel_check(UNIVERSEG, {"model": UNIVERSEG, "image": "/x.nii.gz", "support_dir": str(tmp)})
    return Outcome(proc, None, "request parameter 'support_dir' cannot be set by a request (it names a path")


def monailabel_request_sets_unlisted_key(tmp, bundles):
    proc = _monailabel_check(LVIT, {"model": LVIT, "image": "/x.png", "threshold": 0.1})
    return Outcome(proc, None, "request parameter 'threshold' cannot be set by a request (it is not declared); "
                               "this bundle accepts: text, text_mode")


SLOW = pytest.mark.slow
ROWS = [
    pytest.param(nan_voxels_lvit, marks=SLOW, id="nan-voxels-lvit"),
    pytest.param(infinite_voxels_universeg, marks=SLOW, id="inf-voxels-universeg"),
    pytest.param(huge_voxels_levit, marks=SLOW, id="3e38-voxels-levit"),
    pytest.param(truncated_nifti_levit, marks=SLOW, id="truncated-nii-gz-levit"),
    pytest.param(dicom_folder_with_two_series_levit, marks=SLOW, id="two-dicom-series-levit"),
    pytest.param(rgb_png_to_grey_universeg, marks=SLOW, id="rgb-png-to-grey-bundle-universeg"),
    pytest.param(volume_to_lvit, marks=SLOW, id="3d-volume-to-lvit"),
    pytest.param(thin_volume_to_lvit, marks=SLOW, id="3-slice-volume-to-lvit"),
    pytest.param(lvit_training_label_7, marks=SLOW, id="lvit-training-label-7"),
    pytest.param(lvit_training_fractional_label, marks=SLOW, id="lvit-training-label-0.5"),
    pytest.param(lvit_training_empty_split, marks=SLOW, id="lvit-training-empty-split"),
    pytest.param(pacs_invalid_uid, id="pacs-invalid-uid"),
    pytest.param(pacs_retrieve_returns_more_instances, id="pacs-retrieve-more-instances"),
    pytest.param(pacs_text_expression, id="pacs-text-expression"),
    pytest.param(monailabel_request_sets_path_key, id="monailabel-path-key"),
    pytest.param(monailabel_request_sets_support_folder, id="monailabel-support-dir-path"),
    pytest.param(monailabel_request_sets_unlisted_key, id="monailabel-unlisted-key"),
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return Bundles(tmp_path_factory.mktemp("bad_input_bundles"))


@pytest.mark.parametrize("case", ROWS)
def test_bad_input_stops_with_one_line_and_writes_nothing(case, bundles, tmp_path):
    outcome = case(tmp_path, bundles)
    output = outcome.proc.stdout + outcome.proc.stderr
    assert outcome.proc.returncode != 0, output[-4000:]
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert outcome.phrase in last, f"last line: {last!r}\n{output[-4000:]}"
    if outcome.names is not None:
        assert outcome.names in last, f"last line does not name {outcome.names}: {last!r}"
    for path in outcome.absent:
        assert not path.exists(), f"{path} was written"
    assert not list(tmp_path.glob(".*partial*")), "a staging folder was left behind"


# ------------------------------------------------------------------------------------------------------------------
# what still works, and how the mechanism is wired


@pytest.mark.slow
def test_rgb_png_to_lvit_is_segmented_with_its_shape(bundles, tmp_path):
    image = _png(tmp_path / "colour.png", _rng().integers(0, 255, (40, 48, 3)))
    proc, out = _infer(bundles(LVIT), image, tmp_path, *TEXT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    pred = nib.load(str(out / "colour_seg.nii.gz"))
    assert pred.shape == (48, 40)  # MONAI's PNG axes (width, height), as for a grey PNG


@pytest.mark.slow
def test_chosen_dicom_series_is_segmented_under_the_folder_name(bundles, tmp_path):
    folder, uids = _two_series_folder(tmp_path)
    proc, out = _infer(bundles(LEVIT), folder, tmp_path, "--series", uids[1])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert [p.name for p in out.iterdir()] == ["study_folder_seg.nii.gz"]
    assert nib.load(str(out / "study_folder_seg.nii.gz")).shape == (16, 16, 3)
    proc, _ = _infer(bundles(LEVIT), folder, tmp_path / "other", "--series", "1.2.3.4")
    assert proc.returncode != 0 and "has no series 1.2.3.4" in (proc.stdout + proc.stderr).splitlines()[-1]


@pytest.mark.slow
def test_lvit_text_file_carries_a_sentence_starting_with_a_dollar(bundles, tmp_path):
    image = _png(tmp_path / "xray.png", _rng().integers(0, 255, (32, 32)))
    text = tmp_path / "report.txt"
    text.write_text("$5 infected areas, upper left lung.\n")
    proc, out = _infer(bundles(LVIT), image, tmp_path, "--text_file", str(text))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (out / "xray_seg.nii.gz").is_file()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir()))
def test_every_inference_config_checks_loaded_images_and_stages_predictions(name):
    configs = REPO / "bundles" / name / "configs"
    for path in sorted(configs.glob("inference*.json")):
        config = json.loads(path.read_text())
        transforms = config.get("preprocessing", {}).get("transforms", [])
        targets = [t.get("_target_") for t in transforms]
        if "LoadImaged" in targets:
            assert targets[targets.index("LoadImaged") + 1] == "custom_components.transforms.CheckImaged", path
        for t in config.get("postprocessing", {}).get("transforms", []):
            if t.get("_target_") == "SaveImaged":
                assert t["output_dir"] == "$@staged_output.path", path
    main = json.loads((configs / "inference.json").read_text())
    assert main["staged_output"]["_target_"] == "custom_components.engines.StagedOutputDir"
    assert main["run"] == ["$@staged_output.run(@evaluator)"]
    assert "@series" in main["datalist"]


def test_staged_output_commits_on_success_and_leaves_nothing_on_failure(tmp_path):
    from custom_components.engines import StagedOutputDir

    out = tmp_path / "new" / "predictions"
    staged = StagedOutputDir(out)

    def fails():
        Path(staged.path).mkdir(parents=True)
        (Path(staged.path) / "a_seg.nii.gz").write_bytes(b"x")
        raise ValueError("b.nii.gz: bad")

    with pytest.raises(ValueError):
        staged.run(fails)
    assert not (tmp_path / "new").exists()  # neither the staging folder nor the parent made for it

    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("old")
    staged = StagedOutputDir(tmp_path / "kept")

    def writes():
        Path(staged.path).mkdir()
        (Path(staged.path) / "a_seg.nii.gz").write_bytes(b"x")

    staged.run(writes)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["a_seg.nii.gz", "old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]


def test_image_check_and_truncation_check_units(tmp_path):
    import torch

    from custom_components.data.validation import InputDataError, check_datalist, image_problems
    from custom_components.transforms import CheckImaged

    assert image_problems(torch.zeros(1, 8, 8, 4), 3, 1) == []
    assert image_problems(torch.zeros(1, 8, 8, 1), 2, 1) == []  # a one-image DICOM series
    assert "has 3 channels" in image_problems(torch.zeros(3, 8, 8), (2, 3), 1)[0]
    assert "expected a 3D image" in image_problems(torch.zeros(1, 8, 8), 3, 1)[0]
    assert "in magnitude" in image_problems(torch.full((1, 4, 4), 3e38), 2, 1)[0]
    assert image_problems(torch.full((1, 4, 4), 3000, dtype=torch.int16), 2, 1) == []
    with pytest.raises(InputDataError, match=r"scan\.nii\.gz: has 1 NaN"):
        x = torch.zeros(1, 4, 4)
        x[0, 1, 1] = float("nan")
        CheckImaged("image", spatial_dims=2)({"image": x, "image_source": "scan.nii.gz"})
    raw = _nii(tmp_path / "raw.nii", np.zeros((8, 8, 4), np.float32))
    raw.write_bytes(raw.read_bytes()[:-10])
    gz = _nii(tmp_path / "ok.nii.gz", np.zeros((8, 8, 4), np.float32))
    assert gzip.decompress(gz.read_bytes())  # a good file passes without being read twice in full
    check_datalist([{"image": str(gz)}], label_key=None)
    with pytest.raises(InputDataError, match=r"raw\.nii: truncated"):
        check_datalist([{"image": str(raw)}], label_key=None)
