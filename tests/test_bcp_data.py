"""BCP data: synthetic cardiac / left-atrium phantoms, their datalists, the labeled split, ACDC and LA converters."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from custom_components.data.acdc import (
    convert_acdc_h5,
    convert_la_h5,
    generate_acdc_synthetic,
    generate_la_synthetic,
    labeled_items,
    split_first_patients,
    unlabeled_items,
)
from custom_components.data.synthetic.cardiac import CardiacMRIPhantom, LeftAtriumPhantom


def test_cardiac_phantom_anatomy_and_intensities():
    image, label = CardiacMRIPhantom((96, 96, 6)).generate(3)
    assert image.shape == label.shape == (96, 96, 6) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(label)) == {0, 1, 2, 3}
    for z in range(6):
        lv, myo = label[..., z] == 3, label[..., z] == 2
        assert lv.any() and myo.any()
        # the LV blood pool is enclosed by the myocardium
        assert not (ndimage.binary_dilation(lv) & (label[..., z] == 0)).any()
        assert image[..., z][lv].mean() > image[..., z][myo].mean() + 0.2  # bright blood, dark muscle
    assert (label[..., 0] == 1).any()  # RV at the base
    assert (label[..., 0] == 3).sum() > (label[..., -1] == 3).sum()  # cavities shrink towards the apex
    other, _ = CardiacMRIPhantom((96, 96, 6)).generate(4)
    assert not np.allclose(image, other)
    again, _ = CardiacMRIPhantom((96, 96, 6)).generate(3)
    np.testing.assert_array_equal(image, again)


def test_left_atrium_phantom():
    image, label = LeftAtriumPhantom((48, 48, 32)).generate(0)
    assert image.shape == label.shape == (48, 48, 32)
    assert set(np.unique(label)) == {0, 1}
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-3  # z-scored
    assert image[label == 1].mean() > image[label == 0].mean() + 0.5
    assert 0.005 < label.mean() < 0.2


def test_synthetic_datalists_split_by_patient(tmp_path):
    path = generate_acdc_synthetic(tmp_path / "acdc", num_labeled=2, num_unlabeled=3, num_validation=1, num_test=2,
                                   shape=(32, 32, 4))
    data = json.loads(open(path).read())
    assert [len(data[k]) for k in ("training", "unlabeled", "validation", "test")] == [2, 3, 1, 2]
    patients = [it["patient"] for k in ("training", "unlabeled", "validation", "test") for it in data[k]]
    assert len(set(patients)) == len(patients) == 8
    lab, unl = split_first_patients(path)
    assert len(lab) == 2 and len(unl) == 3 and all("label" not in it for it in unl)
    lab, unl = split_first_patients(path, 3)
    assert [it["patient"] for it in lab] == ["patient000", "patient001", "patient002"] and len(unl) == 2
    assert len(labeled_items(path, 1, repeats=4)) == 4 and len(unlabeled_items(path, 5)) == 0
    img = nib.load(lab[0]["image"])
    assert img.shape == (32, 32, 4)
    la = generate_la_synthetic(tmp_path / "la", 1, 1, 1, 1, shape=(32, 32, 32))
    assert set(json.loads(open(la).read())) >= {"training", "unlabeled", "validation", "test"}


def _acdc_layout(root):
    (root / "data" / "slices").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = {"train": ["patient001_frame01", "patient001_frame12", "patient002_frame01", "patient003_frame01"],
             "val": ["patient004_frame01"], "test": ["patient005_frame01"]}
    for split, vols in names.items():
        (root / f"{split}.list").write_text("\n".join(vols) + "\n")
        for v in vols:
            with h5py.File(root / "data" / f"{v}.h5", "w") as f:
                f["image"] = rng.random((3, 16, 20)).astype(np.float32)
                f["label"] = rng.integers(0, 4, (3, 16, 20)).astype(np.uint8)
    # slices list in a different patient order: patient002 first
    order = ["patient002_frame01", "patient001_frame01", "patient001_frame12", "patient003_frame01"]
    (root / "train_slices.list").write_text("\n".join(f"{v}_slice_{z}" for v in order for z in range(3)) + "\n")


def test_convert_acdc_h5_labeled_patients_follow_the_slice_list(tmp_path):
    _acdc_layout(tmp_path / "ACDC")
    path = convert_acdc_h5(tmp_path / "ACDC", tmp_path / "out", num_labeled=2)
    data = json.loads(open(path).read())
    assert [it["patient"] for it in data["training"]] == ["patient002", "patient001", "patient001"]
    assert [it["patient"] for it in data["unlabeled"]] == ["patient003"]
    assert len(data["validation"]) == len(data["test"]) == 1
    img = nib.load(tmp_path / "out" / data["training"][0]["image"])
    assert img.shape == (16, 20, 3)  # D x H x W -> H x W x D
    with h5py.File(tmp_path / "ACDC" / "data" / "patient002_frame01.h5") as f:
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out" / data["training"][0]["label"]).dataobj),
                                      np.asarray(f["label"]).transpose(1, 2, 0))


def test_convert_la_h5(tmp_path):
    root = tmp_path / "LA"
    rng = np.random.default_rng(0)
    cases = [f"CASE{i:02d}" for i in range(7)]
    for c in cases:
        (root / c).mkdir(parents=True)
        with h5py.File(root / c / "mri_norm2.h5", "w") as f:
            f["image"] = rng.standard_normal((12, 10, 8)).astype(np.float32)
            f["label"] = rng.integers(0, 2, (12, 10, 8)).astype(np.uint8)
    (root / "train.list").write_text("\n".join(cases[:5]) + "\n")
    (root / "test.list").write_text("\n".join(cases[5:]) + "\n")
    data = json.loads(open(convert_la_h5(root, tmp_path / "out", num_labeled=2, num_validation=1)).read())
    assert [it["patient"] for it in data["training"]] == ["CASE00", "CASE01"]
    assert [it["patient"] for it in data["unlabeled"]] == ["CASE02", "CASE03"]
    assert [it["patient"] for it in data["validation"]] == ["CASE04"]  # never the test set
    assert [it["patient"] for it in data["test"]] == ["CASE05", "CASE06"]
    with pytest.raises(ValueError):
        convert_la_h5(root, tmp_path / "out2", num_labeled=5, num_validation=1)


# ---------------------------------------------------------------------------------------------- 2D batch composition
def test_slice_items_one_item_per_slice(tmp_path):
    from custom_components.data.acdc import slice_items

    path = generate_acdc_synthetic(tmp_path / "acdc", num_labeled=2, num_unlabeled=1, num_validation=0, num_test=0,
                                   shape=(16, 16, 3))
    lab, _ = split_first_patients(path)
    items = slice_items(lab)
    assert [(it["patient"], it["slice"]) for it in items] == [(p, z) for p in ("patient000", "patient001")
                                                               for z in range(3)]
    assert all(it["image"] == lab[0]["image"] for it in items[:3])


def test_2d_streams_draw_independent_slices_and_keep_the_patient_split(tmp_path):
    """Official ACDC batches are slices drawn independently from the slice list, so each half (La, Lb, Ua, Ub) mixes
    slices of several volumes; the labeled/unlabeled split stays by patient."""
    from pathlib import Path

    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    cfg = Path(__file__).resolve().parents[1] / "bundles" / "bcp_acdc_segmentation" / "configs"
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), str(cfg / "quick.json")])
    parser.update({"bundle_root": str(tmp_path), "img_size": 32, "batch_size": 8, "num_labeled": 3,
                   "synthetic_data#num_labeled": 3, "synthetic_data#num_unlabeled": 3,
                   "synthetic_data#num_validation": 1, "synthetic_data#num_test": 0,
                   "synthetic_data#shape": [32, 32, 6]})
    set_determinism(0)
    from custom_components.data import ensure_dataset

    ensure_dataset(parser.get_parsed_content("dataset_dir"), parser.get_parsed_content("synthetic_data"))
    labeled = {"patient000", "patient001", "patient002"}
    for key, allowed in (("train#dataloader", labeled), ("train#unlabeled_dataloader", None)):
        loader = parser.get_parsed_content(key)
        assert len(loader.dataset) == 18  # 3 patients x 6 slices
        mixed_halves = 0
        for batch in list(loader)[:2]:
            assert batch["image"].shape == (8, 1, 32, 32)
            patients, slices = list(batch["patient"]), batch["slice"].tolist()
            assert len(set(zip(patients, slices))) == 8  # 8 different slices
            if allowed is not None:
                assert set(patients) <= allowed
                assert batch["label"].shape == (8, 1, 32, 32)
            else:
                assert not set(patients) & labeled and "label" not in batch
            mixed_halves += sum(len(set(half)) > 1 for half in (patients[:4], patients[4:]))
        assert mixed_halves >= 3  # halves are not one volume each (as 2 volumes x 6 slices made them)
