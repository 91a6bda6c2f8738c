"""UniverSeg data side: task generator determinism and held-out families, real-datalist tasks, episodes
(task-balanced sampling, task augmentation applied identically, in-task augmentation per image), task transforms,
support-folder reading and its errors, the few-shot inferer with ensembling and label combination."""

from __future__ import annotations

import json
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import torch

from custom_components.data.fewshot import (
    HELDOUT_KINDS,
    TRAIN_KINDS,
    ArrayTask,
    EpisodicDataset,
    generate_fewshot_synthetic,
    read_support_folder,
    synthetic_tasks,
    tasks_from_datalist,
)
from custom_components.data.validation import InputDataError
from custom_components.engines.fewshot import CombineLabelsd, FewShotInferer, PrepareEpisodeBatch, predict_episode
from custom_components.networks.universeg import UniverSeg
from custom_components.transforms.fewshot import RandBoundaryLabeld, RandInvertIntensityd, RandInvertLabeld


def _save(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4)), str(path))
    return str(path)


# ---- synthetic tasks ---------------------------------------------------------------------------------------------


def test_synthetic_tasks_are_deterministic_and_distinct():
    a = synthetic_tasks(6, seed=3, size=32)
    b = synthetic_tasks(6, seed=3, size=32)
    c = synthetic_tasks(6, seed=4, size=32)
    for ta, tb in zip(a, b):
        assert ta == tb
        ia, la = ta.sample(5)
        ib, lb = tb.sample(5)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[0].sample(0)[0], c[0].sample(0)[0])
    img, lab = a[1].sample(0)
    assert img.shape == lab.shape == (32, 32) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and set(np.unique(lab)) <= {0.0, 1.0}
    assert not np.array_equal(a[1].sample(0)[0], a[1].sample(1)[0])  # images of a task differ
    many = synthetic_tasks(3000, seed=0, size=32)
    assert len({t.seed for t in many}) == 3000  # thousands of distinct tasks from one seed
    assert {t.family for t in many} == set(TRAIN_KINDS)


def test_heldout_families_never_appear_in_training_tasks():
    train = synthetic_tasks(500, seed=0, kinds="train", size=32)
    assert not any(s.kind in HELDOUT_KINDS for t in train for s in t.structures)
    held = synthetic_tasks(20, seed=0, kinds="heldout", size=32)
    assert {t.family for t in held} == set(HELDOUT_KINDS)
    assert all(t.structures[t.target].kind in HELDOUT_KINDS for t in held)
    with pytest.raises(ValueError, match="unknown structure kinds"):
        synthetic_tasks(1, kinds=["hexagon"])


def test_labels_mostly_non_empty():
    tasks = synthetic_tasks(40, seed=1, size=48) + synthetic_tasks(10, seed=1, kinds="heldout", size=48)
    frac = np.mean([t.sample(0)[1].sum() > 0 for t in tasks])
    assert frac > 0.85


# ---- real datalists -----------------------------------------------------------------------------------------------


def test_tasks_from_datalist_split_classes_and_axes(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((20, 24, 16)).astype(np.float32) * 100
    lab = np.zeros((20, 24, 16), np.uint8)
    lab[5:15, 6:18, 4:12] = 1
    lab[2:6, 2:6, 2:14] = 2
    item = {"image": _save(img, tmp_path / "img.nii.gz"), "label": _save(lab, tmp_path / "lab.nii.gz"), "subject": "s1"}
    item2d = {"image": _save(img[:, :, 8], tmp_path / "i2.nii.gz"), "label": _save(lab[:, :, 8], tmp_path / "l2.nii.gz")}
    tasks = tasks_from_datalist([item, item2d], "toy", size=32, axes=(0, 2), min_foreground=1, min_images=1)
    names = {t.name: t for t in tasks}
    assert {"toy/0/1", "toy/2/1", "toy/0/2", "toy/2/2", "toy/2d/1", "toy/2d/2"} <= set(names)
    assert len(names["toy/0/1"]) == 10 and len(names["toy/2/1"]) == 8 and len(names["toy/0/2"]) == 4
    t = names["toy/2/1"]
    assert t.images.shape == (8, 32, 32) and t.labels.shape == (8, 32, 32)
    assert np.isclose(t.images.min(), 0) and np.isclose(t.images.max(), 1)
    assert set(np.unique(t.labels)) == {0.0, 1.0}
    assert t.subjects[0] == "s1"


# ---- episodes -----------------------------------------------------------------------------------------------------


def _index_task(name: str, n: int, size: int = 16) -> ArrayTask:
    """Image j is the constant j / 100, label j is a square: each image identifies itself."""
    imgs = np.stack([np.full((size, size), j / 100.0, np.float32) for j in range(n)])
    labs = np.zeros((n, size, size), np.float32)
    labs[:, 4:10, 3:8] = 1
    return ArrayTask(name, imgs, labs)


def test_episode_shapes_distinct_images_and_determinism():
    ds = EpisodicDataset([_index_task("a", 12), _index_task("b", 30)], support_size=5, length=10, deterministic=True)
    ep = ds[3]
    assert ep["image"].shape == (1, 16, 16) and ep["label"].shape == (1, 16, 16)
    assert ep["support_images"].shape == (5, 1, 16, 16) and ep["support_labels"].shape == (5, 1, 16, 16)
    ids = [round(float(ep["image"][0, 0, 0]) * 100)] + [round(float(x) * 100) for x in ep["support_images"][:, 0, 0, 0]]
    assert len(set(ids)) == 6  # query and support are distinct images
    assert torch.equal(ds[3]["support_images"], ep["support_images"])  # deterministic
    batch = PrepareEpisodeBatch()(torch.utils.data.default_collate([ds[0], ds[1]]), "cpu")
    assert batch[0].shape == (2, 1, 16, 16) and batch[2][0].shape == (2, 5, 1, 16, 16) and batch[3] == {}


def test_tasks_are_sampled_uniformly_not_by_image_count():
    ds = EpisodicDataset([_index_task("small", 4), _index_task("big", 400)], support_size=2, length=2000,
                         deterministic=True)
    counts = Counter(ds[i]["task"] for i in range(2000))
    assert abs(counts["small"] - counts["big"]) < 200, counts


def test_small_tasks_are_left_out_and_empty_raises():
    ds = EpisodicDataset([_index_task("small", 3), _index_task("big", 20)], support_size=4, length=5)
    assert [t.name for t in ds.tasks] == ["big"]
    with pytest.raises(InputDataError, match="fewer than S"):
        EpisodicDataset([_index_task("small", 3)], support_size=4)


def test_task_augmentation_identical_and_in_task_per_image():
    from monai.transforms import Compose, RandAffined, RandFlipd

    # every image of the task is the same random image: after a task transform they must still be identical
    rng = np.random.default_rng(0)
    base = rng.random((24, 24)).astype(np.float32)
    lab = (rng.random((24, 24)) > 0.7).astype(np.float32)
    task = ArrayTask("same", np.stack([base] * 10), np.stack([lab] * 10))
    task_tf = Compose([
        RandAffined(["images", "labels"], prob=1.0, rotate_range=0.8, translate_range=(4, 4), mode=["bilinear", "nearest"]),
        RandFlipd(["images", "labels"], prob=1.0, spatial_axis=0),
        RandInvertIntensityd("images", prob=1.0),
    ])
    ds = EpisodicDataset([task], support_size=6, length=4, task_transform=task_tf, seed=1)
    ep = ds[0]
    assert not torch.allclose(ep["image"][0], torch.as_tensor(base))  # it was transformed
    for k in range(6):
        assert torch.allclose(ep["support_images"][k], ep["image"], atol=1e-6)
        assert torch.equal(ep["support_labels"][k], ep["label"])
    img_tf = RandAffined(["image", "label"], prob=1.0, rotate_range=0.8, mode=["bilinear", "nearest"])
    ds2 = EpisodicDataset([task], support_size=6, length=4, image_transform=img_tf, seed=1)
    ep2 = ds2[0]
    assert not torch.allclose(ep2["support_images"][0], ep2["support_images"][1])  # independent per image


def test_episode_transforms():
    lab = torch.zeros(2, 10, 10)
    lab[:, 2:8, 2:8] = 1
    inv = RandInvertLabeld("labels", prob=1.0)({"labels": lab})["labels"]
    assert torch.equal(inv, 1 - lab)
    img = torch.rand(2, 10, 10)
    assert torch.allclose(RandInvertIntensityd("images", prob=1.0)({"images": img})["images"], 1 - img)
    assert torch.equal(RandInvertLabeld("labels", prob=0.0)({"labels": lab})["labels"], lab)
    b = RandBoundaryLabeld("labels", prob=1.0)({"labels": lab})["labels"]
    assert b.shape == lab.shape and int(b[0].sum()) == 36 - 16  # 6x6 square minus its 4x4 interior
    assert b[0, 2, 2] == 1 and b[0, 4, 4] == 0


# ---- support folder -----------------------------------------------------------------------------------------------


def _support_folder(root, n=3, shape=(20, 20), values=(1, 2)):
    rng = np.random.default_rng(0)
    for k in range(n):
        _save(rng.random(shape).astype(np.float32), root / "images" / f"s{k}.nii.gz")
        lab = np.zeros(shape, np.uint8)
        lab[2:8, 2:8] = values[0]
        if len(values) > 1:
            lab[10:16, 10:16] = values[1]
        _save(lab, root / "labels" / f"s{k}.nii.gz")
    return root


def test_read_support_folder(tmp_path):
    sup = read_support_folder(_support_folder(tmp_path / "sup"), size=32)
    assert sup.images.shape == (3, 32, 32) and sup.label_values == [1, 2]
    imgs, maps = sup.binary(2)
    assert maps.shape == (3, 32, 32) and set(np.unique(maps)) == {0.0, 1.0}
    # flat layout <name> + <name>_label, 3D volumes sliced along an axis
    flat = tmp_path / "flat"
    vol = np.zeros((16, 16, 6), np.uint8)
    vol[4:10, 4:10, 1:4] = 3
    _save(np.random.default_rng(1).random((16, 16, 6)).astype(np.float32), flat / "v.nii.gz")
    _save(vol, flat / "v_label.nii.gz")
    sup3 = read_support_folder(flat, size=16, axis=2)
    assert sup3.images.shape == (3, 16, 16) and sup3.label_values == [3]


def test_support_folder_errors(tmp_path):
    with pytest.raises(InputDataError, match="empty support set"):
        (tmp_path / "empty").mkdir()
        read_support_folder(tmp_path / "empty")
    root = _support_folder(tmp_path / "orphan")
    _save(np.zeros((20, 20), np.float32), root / "images" / "lonely.nii.gz")
    with pytest.raises(InputDataError, match="support image without label: .*lonely.nii.gz"):
        read_support_folder(root)
    root = _support_folder(tmp_path / "mismatch")
    _save(np.zeros((20, 24), np.uint8), root / "labels" / "s1.nii.gz")
    with pytest.raises(InputDataError, match=r"s1.nii.gz: label shape \[20, 24\] differs from image"):
        read_support_folder(root)
    root = _support_folder(tmp_path / "nofg", values=(0,))
    with pytest.raises(InputDataError, match="no foreground"):
        read_support_folder(root)
    with pytest.raises(InputDataError, match="not found"):
        read_support_folder(tmp_path / "absent")


# ---- inference pieces ---------------------------------------------------------------------------------------------


def test_predict_episode_ensemble_is_mean_of_probabilities():
    torch.manual_seed(0)
    net = UniverSeg((8,) * 4, (8,) * 3).eval()
    q = torch.rand(3, 1, 16, 16)
    pool_i, pool_l = torch.rand(10, 1, 16, 16), (torch.rand(10, 1, 16, 16) > 0.5).float()
    with torch.no_grad():
        got = predict_episode(net, q, pool_i, pool_l, 4, 3, torch.Generator().manual_seed(5), batch_size=2)
        g = torch.Generator().manual_seed(5)
        ref = torch.zeros_like(q)
        for _ in range(3):
            idx = torch.randperm(10, generator=g)[:4]
            ref += torch.sigmoid(net(q, pool_i[idx][None].expand(3, -1, -1, -1, -1),
                                     pool_l[idx][None].expand(3, -1, -1, -1, -1)))
    assert torch.allclose(got, ref / 3, atol=1e-6)


def test_combine_labels():
    p = torch.zeros(2, 4, 4)
    p[0, 0, :] = 0.9
    p[1, 0, :2] = 0.95
    p[1, 1, :] = 0.6
    out = CombineLabelsd("pred", label_values=[3, 7])({"pred": p})["pred"]
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [7, 7, 3, 3] and out[0, 1].tolist() == [7] * 4 and out[0, 2].sum() == 0
    single = CombineLabelsd("pred")({"pred": p[:1]})["pred"]
    assert single[0, 0].tolist() == [1, 1, 1, 1]


def test_fewshot_inferer_2d_and_3d(tmp_path):
    torch.manual_seed(0)
    net = UniverSeg((8,) * 4, (8,) * 3).eval()
    inferer = FewShotInferer(str(_support_folder(tmp_path / "sup")), img_size=16, support_size=2, num_ensemble=2)
    assert inferer.label_values == [1, 2]
    with torch.no_grad():
        out2 = inferer(torch.rand(1, 1, 20, 28) * 50, net)
        out3 = inferer(torch.rand(1, 1, 20, 28, 5), net)
        again = inferer(torch.rand(1, 1, 20, 28, 5), net)
    assert out2.shape == (1, 2, 20, 28) and out3.shape == (1, 2, 20, 28, 5)
    assert 0 <= float(out3.min()) and float(out3.max()) <= 1
    assert again.shape == out3.shape
    inferer.axis = 0
    with torch.no_grad():
        assert inferer(torch.rand(1, 1, 6, 20, 28), net).shape == (1, 2, 6, 20, 28)


def test_generated_dataset_layout(tmp_path):
    path = generate_fewshot_synthetic(tmp_path / "d", num_heldout_tasks=2, images_per_task=4, num_inference_targets=2,
                                      num_inference_support=3, size=32)
    dl = json.loads(open(path).read())
    assert len(dl["validation"]) == 4 and len(dl["test"]) == 4
    assert all(it["task"].split("/")[1] in HELDOUT_KINDS for it in dl["validation"] + dl["test"])
    assert len(list((tmp_path / "d" / "inference" / "images").glob("*.nii.gz"))) == 2
    assert len(list((tmp_path / "d" / "inference" / "support" / "labels").glob("*.nii.gz"))) == 3
    sup = read_support_folder(tmp_path / "d" / "inference" / "support", size=32)
    assert sup.label_values == [1]
