"""Tests of the Synapse synthetic generator and of the converter of the published layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from custom_components.data.__main__ import main as data_main
from custom_components.data.synapse import (
    BTCV_TO_SYNAPSE,
    SYNAPSE_CLASSES,
    convert_synapse,
    generate_synapse_synthetic,
)
from custom_components.data.synthetic import BTCV_CLASSES, AbdomenCTPhantom

SHAPE, SPACING, SEED = (72, 64, 24), (6.0, 5.0, 10.0), 3
S = {name: i for i, name in enumerate(SYNAPSE_CLASSES)}


def load(path: str) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img


def test_class_tables():
    assert SYNAPSE_CLASSES == (
        "background", "aorta", "gallbladder", "left_kidney", "right_kidney", "liver", "pancreas", "spleen", "stomach"
    )
    np.testing.assert_array_equal(BTCV_TO_SYNAPSE, [0, 7, 4, 3, 2, 0, 5, 8, 1, 0, 0, 6, 0, 0])
    assert BTCV_TO_SYNAPSE.dtype == np.uint8
    for btcv_index, name in enumerate(BTCV_CLASSES):
        assert SYNAPSE_CLASSES[BTCV_TO_SYNAPSE[btcv_index]] == (name if name in SYNAPSE_CLASSES else "background")


# --------------------------------------------------------------------------------------------------
# synthetic generator
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synapse") / "dataset"
    path = generate_synapse_synthetic(
        root, num_training=2, num_validation=1, num_test=1, shape=SHAPE, spacing=SPACING, seed=SEED
    )
    return root, path


def test_synthetic_datalist_reads_with_monai(synthetic):
    root, path = synthetic
    assert Path(path) == root / "dataset.json"
    sizes = {}
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(path, data_list_key=key, base_dir=str(root))
        sizes[key] = len(items)
        for item in items:
            assert os.path.isfile(item["image"]) and os.path.isfile(item["label"])
            assert ("imagesTs" in item["image"]) == (key == "test")
    assert sizes == {"training": 2, "validation": 1, "test": 1}
    datalist = json.loads(Path(path).read_text())
    assert datalist["labels"] == {str(i): name for i, name in enumerate(SYNAPSE_CLASSES)}
    assert datalist["description"]
    assert sorted(os.listdir(root.parent)) == ["dataset"]  # no temporary folder left


def test_synthetic_volumes_layout_and_labels(synthetic):
    root, path = synthetic
    datalist = json.loads(Path(path).read_text())
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    seen = set()
    for item in items:
        image, img = load(str(root / item["image"]))
        label, lab = load(str(root / item["label"]))
        assert image.shape == label.shape == (SHAPE[1], SHAPE[0], SHAPE[2])  # (H, W, D) = (Y, X, Z)
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(img.affine) == ("P", "L", "S") and np.allclose(img.affine, lab.affine)
        assert np.allclose(img.header.get_zooms(), (SPACING[1], SPACING[0], SPACING[2]))
        assert -1024 <= image.min() and image.max() > 300
        seen |= set(np.unique(label).tolist())
        # rows run anterior -> posterior, columns from the patient's right to left
        col = {k: np.argwhere(label == S[k])[:, 1].mean() for k in ("liver", "spleen", "right_kidney", "left_kidney")}
        row = {k: np.argwhere(label == S[k])[:, 0].mean() for k in ("pancreas", "right_kidney", "left_kidney")}
        assert col["liver"] < col["spleen"] and col["right_kidney"] < col["left_kidney"]
        assert row["right_kidney"] > row["pancreas"] and row["left_kidney"] > row["pancreas"]
    assert seen == set(range(len(SYNAPSE_CLASSES)))


def test_synthetic_cases_follow_the_documented_seeding(synthetic):
    root, path = synthetic
    item = json.loads(Path(path).read_text())["validation"][0]  # case index 2
    assert item["image"].endswith("case_0002.nii.gz")
    image, label = AbdomenCTPhantom(SHAPE, SPACING).generate([SEED, 2])
    np.testing.assert_array_equal(load(str(root / item["label"]))[0], BTCV_TO_SYNAPSE[label].transpose(1, 0, 2))
    expected_image = np.rint(image).astype(np.int16).transpose(1, 0, 2)
    np.testing.assert_array_equal(load(str(root / item["image"]))[0], expected_image)


def test_synthetic_existing_dataset_is_kept(synthetic, tmp_path):
    root, path = synthetic
    mtime = os.stat(path).st_mtime_ns
    assert generate_synapse_synthetic(root, num_training=5, shape=SHAPE, spacing=SPACING) == path
    assert os.stat(path).st_mtime_ns == mtime
    other = tmp_path / "other"
    other.mkdir()
    (other / "stray.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_synapse_synthetic(other, num_training=1, num_validation=0, num_test=0, shape=SHAPE, spacing=SPACING)
    with pytest.raises(ValueError):
        generate_synapse_synthetic(tmp_path / "none", num_training=0, shape=SHAPE, spacing=SPACING)
    assert not (tmp_path / "none").exists()


# --------------------------------------------------------------------------------------------------
# converter of the published layout
# --------------------------------------------------------------------------------------------------
H, W = 6, 5
TRAIN = {"case0005": 4, "case0006": 3, "case0007": 5, "case0009": 2}  # case0009 is not in the lists
TEST = {"case0001": 3, "case0002": 4, "case0003": 2}  # case0003 is not in the lists


def make_published_tree(root: Path, with_lists: str | None = "levit") -> dict:
    """A tiny TransUNet-layout tree; returns the arrays written, by file stem."""
    rng = np.random.default_rng(0)
    arrays = {}
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    for case, n in TRAIN.items():
        for k in range(n):
            image = rng.uniform(0, 1, (H, W)).astype(np.float32)
            label = rng.integers(0, 9, (H, W)).astype(np.float32)
            np.savez(root / "train_npz" / f"{case}_slice{k:03d}.npz", image=image, label=label)
            arrays[f"{case}_slice{k:03d}"] = (image, label)
    for case, d in TEST.items():
        image = rng.uniform(0, 1, (d, H, W)).astype(np.float32)
        label = rng.integers(0, 9, (d, H, W)).astype(np.float32)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"], f["label"] = image, label
        arrays[case] = (image, label)
    train_lines = [f"{c}_slice{k:03d}" for c in ("case0007", "case0005", "case0006") for k in range(TRAIN[c])]
    rng.shuffle(train_lines)
    names = {"levit": ("train_slice_synapse.txt", "test_vol_synapse.txt"), "transunet": ("train.txt", "test_vol.txt")}
    if with_lists:
        list_dir = root / "lists" if with_lists == "levit" else root
        list_dir.mkdir(exist_ok=True)
        (list_dir / names[with_lists][0]).write_text("\n".join(train_lines) + "\n")
        (list_dir / names[with_lists][1]).write_text("case0002\ncase0001\n")
    return arrays


def items_by_case(path: str, key: str) -> dict[str, dict]:
    return {Path(i["image"]).name.removesuffix(".nii.gz"): i for i in json.loads(Path(path).read_text())[key]}


def test_convert_with_split_lists(tmp_path):
    src, dst = tmp_path / "Synapse", tmp_path / "out"
    arrays = make_published_tree(src)
    path = convert_synapse(src, dst, num_validation=1, list_dir=src / "lists")
    assert Path(path) == dst / "dataset.json"
    assert set(items_by_case(path, "training")) == {"case0005", "case0006"}
    assert set(items_by_case(path, "validation")) == {"case0007"}  # the last training case, sorted
    assert set(items_by_case(path, "test")) == {"case0001", "case0002"}
    for case, item in items_by_case(path, "training").items():
        image, img = load(str(dst / item["image"]))
        label, _ = load(str(dst / item["label"]))
        assert image.shape == label.shape == (H, W, TRAIN[case]) and image.dtype == np.float32
        assert nib.aff2axcodes(img.affine) == ("P", "L", "S")
        for k in range(TRAIN[case]):
            slice_image, slice_label = arrays[f"{case}_slice{k:03d}"]
            np.testing.assert_allclose(image[:, :, k], slice_image * 400 - 125, atol=1e-3)
            np.testing.assert_array_equal(label[:, :, k], slice_label.astype(np.uint8))
    for case, item in items_by_case(path, "test").items():
        image, _ = load(str(dst / item["image"]))
        label, _ = load(str(dst / item["label"]))
        volume_image, volume_label = arrays[case]
        assert image.shape == (H, W, TEST[case])
        np.testing.assert_allclose(image, volume_image.transpose(1, 2, 0) * 400 - 125, atol=1e-3)
        np.testing.assert_array_equal(label, volume_label.transpose(1, 2, 0).astype(np.uint8))
        assert -125 <= image.min() and image.max() <= 275
    for key in ("training", "validation", "test"):
        for item in load_decathlon_datalist(path, data_list_key=key, base_dir=str(dst)):
            assert os.path.isfile(item["image"]) and os.path.isfile(item["label"])
    assert sorted(os.listdir(tmp_path)) == ["Synapse", "out"]


def test_convert_without_lists_uses_every_file(tmp_path):
    src = tmp_path / "Synapse"
    make_published_tree(src, with_lists=None)
    path = convert_synapse(src, tmp_path / "out", num_validation=2)
    assert set(items_by_case(path, "training")) == {"case0005", "case0006"}
    assert set(items_by_case(path, "validation")) == {"case0007", "case0009"}
    assert set(items_by_case(path, "test")) == set(TEST)


def test_convert_finds_transunet_lists_in_src_dir(tmp_path):
    src = tmp_path / "Synapse"
    make_published_tree(src, with_lists="transunet")
    path = convert_synapse(src, tmp_path / "out", num_validation=0)
    assert set(items_by_case(path, "training")) == {"case0005", "case0006", "case0007"}
    assert items_by_case(path, "validation") == {}
    assert set(items_by_case(path, "test")) == {"case0001", "case0002"}


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "out").exists()
    assert [p for p in os.listdir(tmp_path) if "partial" in p] == []


def test_convert_errors_name_the_problem(tmp_path):
    src = tmp_path / "Synapse"
    make_published_tree(src, with_lists=None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        convert_synapse(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="num_validation"):
        convert_synapse(src, tmp_path / "out", num_validation=4)
    with pytest.raises(FileNotFoundError, match="train_slice_synapse.txt"):
        convert_synapse(src, tmp_path / "out", list_dir=tmp_path)  # an explicit list_dir must hold the lists
    assert_nothing_written(tmp_path)
    bad = src / "train_npz" / "case0006_slice001.npz"
    np.savez(bad, image=np.zeros((H, W), np.float32))  # no label
    with pytest.raises(ValueError, match="case0006_slice001.npz.*label"):
        convert_synapse(src, tmp_path / "out")
    assert_nothing_written(tmp_path)
    np.savez(bad, image=np.zeros((H + 1, W), np.float32), label=np.zeros((H + 1, W), np.float32))
    with pytest.raises(ValueError, match="case0006_slice001.npz"):
        convert_synapse(src, tmp_path / "out")
    assert_nothing_written(tmp_path)
    np.savez(bad, image=np.zeros((H, W), np.float32), label=np.full((H, W), 11.0, np.float32))
    with pytest.raises(ValueError, match="case0006_slice001.npz"):
        convert_synapse(src, tmp_path / "out")
    bad.unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        convert_synapse(src, tmp_path / "out")


def test_convert_errors_for_missing_folders_and_files(tmp_path):
    src = tmp_path / "Synapse"
    make_published_tree(src)
    (src / "lists" / "test_vol_synapse.txt").write_text("case0001\ncase0004\n")
    with pytest.raises(FileNotFoundError, match="case0004.npy.h5"):
        convert_synapse(src, tmp_path / "out", list_dir=src / "lists")
    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5", "a") as f:
        del f["label"]
    (src / "lists" / "test_vol_synapse.txt").write_text("case0001\n")
    with pytest.raises(ValueError, match="case0001.npy.h5"):
        convert_synapse(src, tmp_path / "out", list_dir=src / "lists")
    for folder in (src / "test_vol_h5", src / "train_npz"):
        os.rename(folder, tmp_path / "moved")
        with pytest.raises(FileNotFoundError, match=folder.name):
            convert_synapse(src, tmp_path / "out")
        os.rename(tmp_path / "moved", folder)
    assert_nothing_written(tmp_path)


def test_command_line(tmp_path):
    src = tmp_path / "Synapse"
    make_published_tree(src)
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.run(
        [sys.executable, "-m", "custom_components.data", "convert_synapse", "--src_dir", str(src), "--dst_dir",
         str(tmp_path / "out"), "--num_validation", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RuntimeWarning" not in proc.stderr
    assert os.path.isfile(tmp_path / "out" / "dataset.json")
    out = data_main(
        ["synthetic_synapse", "--dataset_dir", str(tmp_path / "syn"), "--num_training", "1", "--num_validation", "0",
         "--num_test", "0", "--shape", "[40,40,12]", "--spacing", "[10.0,10.0,20.0]"]
    )
    assert len(json.loads(Path(out).read_text())["training"]) == 1
