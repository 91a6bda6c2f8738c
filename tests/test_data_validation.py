"""Bad input stops a workflow with a message naming the file and the problem (unit level)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from custom_components.data.datalist import ensure_dataset, inference_items, load_items
from custom_components.data.validation import InputDataError, check_datalist, require_file


def _nii(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return str(path)


@pytest.fixture()
def good_pair(tmp_path):
    img = _nii(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.float32))
    lab = _nii(tmp_path / "lab.nii.gz", np.array(np.arange(8 * 8 * 4).reshape(8, 8, 4) % 3, np.uint8))
    return {"image": img, "label": lab}


def test_good_items_pass(good_pair):
    assert check_datalist([good_pair, good_pair], spatial_dims=3, num_classes=3) == 2


def test_missing_file_named(good_pair, tmp_path):
    missing = str(tmp_path / "nope.nii.gz")
    with pytest.raises(InputDataError, match=r"nope\.nii\.gz: file not found \(item 1, key 'image'\)"):
        check_datalist([good_pair, {**good_pair, "image": missing}], num_classes=3)


def test_missing_key_named(good_pair):
    with pytest.raises(InputDataError, match=r"item 0: no 'label' entry"):
        check_datalist([{"image": good_pair["image"]}], num_classes=3)


def test_wrong_dimensionality_named(good_pair, tmp_path):
    flat = _nii(tmp_path / "flat2d.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(InputDataError, match=r"flat2d\.nii\.gz: has 2 dimensions \[8, 8\], expected a 3D image"):
        check_datalist([{**good_pair, "image": flat}], spatial_dims=3, num_classes=3)


def test_label_out_of_range_named(good_pair, tmp_path):
    bad = _nii(tmp_path / "badlab.nii.gz", np.full((8, 8, 4), 12, np.uint8))
    with pytest.raises(InputDataError, match=r"badlab\.nii\.gz: label values outside the class range 0\.\.8: 12"):
        check_datalist([{**good_pair, "label": bad}], num_classes=9)


def test_non_integer_label_named(good_pair, tmp_path):
    bad = _nii(tmp_path / "fraction.nii.gz", np.full((8, 8, 4), 0.5, np.float32))
    with pytest.raises(InputDataError, match=r"fraction\.nii\.gz: label values outside the class range"):
        check_datalist([{**good_pair, "label": bad}], num_classes=9)


def test_unreadable_file_named(good_pair, tmp_path):
    junk = tmp_path / "corrupt.nii.gz"
    junk.write_bytes(b"this is not a nifti file")
    with pytest.raises(InputDataError, match=r"corrupt\.nii\.gz: unreadable"):
        check_datalist([{**good_pair, "image": str(junk)}], num_classes=3)


def test_shape_mismatch_named(good_pair, tmp_path):
    other = _nii(tmp_path / "small_label.nii.gz", np.zeros((4, 8, 4), np.uint8))
    with pytest.raises(InputDataError, match=r"small_label\.nii\.gz: label shape \[4, 8, 4\] differs"):
        check_datalist([{**good_pair, "label": other}], num_classes=3)


def test_all_problems_listed_once(good_pair, tmp_path):
    items = [{**good_pair, "image": str(tmp_path / f"missing{i}.nii.gz")} for i in range(3)]
    with pytest.raises(InputDataError) as err:
        check_datalist(items, num_classes=3, source="my_list.json")
    msg = str(err.value)
    assert msg.startswith("my_list.json: 3 problem(s)") and all(f"missing{i}" in msg for i in range(3))


def test_empty_datalist_is_an_error():
    with pytest.raises(InputDataError, match="no items"):
        check_datalist([], num_classes=3)


def test_require_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="trained weights: file not found"):
        require_file(tmp_path / "model.pt", "trained weights")
    (tmp_path / "model.pt").write_bytes(b"x")
    assert require_file(tmp_path / "model.pt", "w").endswith("model.pt")


def test_ensure_dataset_generates_once_and_refuses_foreign_folder(tmp_path):
    calls = []

    def generator(dataset_dir):
        calls.append(dataset_dir)
        from pathlib import Path

        Path(dataset_dir).mkdir(parents=True)
        (Path(dataset_dir) / "dataset.json").write_text(json.dumps({"training": []}))

    target = tmp_path / "data"
    ensure_dataset(target, generator)
    ensure_dataset(target, generator)
    assert len(calls) == 1
    foreign = tmp_path / "real_data"
    foreign.mkdir()
    (foreign / "scan.nii.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not empty but has no dataset.json"):
        ensure_dataset(foreign, generator)
    # an inference input outside the dataset folder needs no synthetic data
    ensure_dataset(tmp_path / "unused", generator, required=str(foreign / "scan.nii.gz"))
    assert len(calls) == 1 and not (tmp_path / "unused").exists()


def test_load_items_and_inference_items(tmp_path, good_pair):
    (tmp_path / "dataset.json").write_text(json.dumps({"test": [{"image": "img.nii.gz", "label": "lab.nii.gz"}]}))
    items = load_items(tmp_path / "dataset.json", "test")
    assert items[0]["image"] == good_pair["image"]
    with pytest.raises(KeyError, match=r"no 'validation' split \(it has: \['test'\]\)"):
        load_items(tmp_path / "dataset.json", "validation")
    assert inference_items(tmp_path / "dataset.json")[0]["label"] == good_pair["label"]
    folder_items = inference_items(tmp_path)
    assert [i["image"] for i in folder_items] == sorted([good_pair["image"], good_pair["label"]])
    assert inference_items(good_pair["image"]) == [{"image": good_pair["image"]}]
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"{i}.dcm").write_bytes(b"")
    assert inference_items(series) == [{"image": str(series.resolve())}]
    with pytest.raises(FileNotFoundError, match="inference input not found"):
        inference_items(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        inference_items(tmp_path / "empty")
