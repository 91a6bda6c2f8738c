"""Tests of custom_components.engines.report against hand-computed values."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from custom_components.engines import (
    SegmentationReport,
    SegmentationReportHandler,
    compute_case_metrics,
    save_overlay_png,
)
from custom_components.engines import report as report_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECORD = {"command": "pytest tests/test_report.py", "date": "2025-01-01 00:00 UTC", "hardware": {"cpu": "test-cpu"}}


def squares_2d(shift: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """GT: 4x4 square at [2:6, 2:6] of a 10x10 map; pred: the same square moved by ``shift``."""
    label = np.zeros((10, 10), dtype=np.int64)
    label[2:6, 2:6] = 1
    pred = np.zeros_like(label)
    pred[2 + shift[0] : 6 + shift[0], 2 + shift[1] : 6 + shift[1]] = 1
    return pred, label


def shifted_cube(cls: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """GT: 4x4x4 cube at [2:6]^3 of a 10^3 volume; pred: the cube moved by one voxel along axis 0.

    Each surface has 4^3 - 2^3 = 56 voxels. Pred surface voxels at distance 1 from the GT surface:
    the 16 of the x=6 face and the 4 inner voxels of the x=3 face (all others lie on the GT surface);
    the reverse direction is symmetric. So HD95 = 1 voxel, symmetric ASD = (20 + 20) / 112 = 5/14.
    """
    label = np.zeros((10, 10, 10), dtype=np.int64)
    label[2:6, 2:6, 2:6] = cls
    pred = np.zeros_like(label)
    pred[3:7, 2:6, 2:6] = cls
    return pred, label


def one_hot(label_map: np.ndarray, num_classes: int, **meta) -> MetaTensor:
    """A one-hot ``(C, *spatial)`` MetaTensor of a label map; ``affine`` and other metadata from ``meta``."""
    t = torch.nn.functional.one_hot(torch.as_tensor(label_map), num_classes).movedim(-1, 0).float()
    affine = meta.pop("affine", None)
    return MetaTensor(t, affine=affine, meta=meta)


# ------------------------------------------------------------------------------------------------
# compute_case_metrics
# ------------------------------------------------------------------------------------------------


def test_dice_iou_of_overlapping_squares():
    # [2:6, 2:6] and [4:8, 4:8]: 16 pixels each, 2x2 = 4 shared
    pred, label = squares_2d((2, 2))
    m = compute_case_metrics(pred, label, num_classes=2)
    assert list(m) == ["1"]
    assert m["1"]["dice"] == pytest.approx(2 * 4 / (16 + 16))
    assert m["1"]["iou"] == pytest.approx(4 / (16 + 16 - 4))
    assert (m["1"]["gt_voxels"], m["1"]["pred_voxels"]) == (16, 16)
    assert "hd95_mm" not in m["1"]
    flipped = compute_case_metrics(np.flip(pred, 0), np.flip(label, 0), num_classes=2)  # negative strides
    assert flipped["1"]["dice"] == pytest.approx(0.25)


def test_square_shifted_by_one_pixel_2d_distances_and_background():
    # 12 of 16 pixels shared; 6 of the 12 boundary pixels of each square are 1 pixel off the other boundary
    pred, label = squares_2d((1, 0))
    m = compute_case_metrics(torch.as_tensor(pred), torch.as_tensor(label), num_classes=2, spacing=(0.5, 2.0),
                             include_background=True)  # fmt: skip
    assert m["1"]["dice"] == pytest.approx(2 * 12 / 32)
    assert m["1"]["iou"] == pytest.approx(12 / 20)
    assert m["1"]["hd95"] == pytest.approx(1.0)
    assert m["1"]["asd"] == pytest.approx(12 / 24)
    # the shift is along axis 0 (0.5 mm), the shortest axis: every distance halves
    assert m["1"]["hd95_mm"] == pytest.approx(0.5)
    assert m["1"]["asd_mm"] == pytest.approx(0.25)
    # background: 84 pixels each, 80 shared
    assert m["0"]["dice"] == pytest.approx(2 * 80 / (84 + 84))
    assert m["0"]["iou"] == pytest.approx(80 / 88)


def test_shifted_cube_distances_in_voxels_and_mm():
    pred, label = shifted_cube()
    m = compute_case_metrics(pred, label, num_classes=2)["1"]
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["iou"] == pytest.approx(48 / 80)
    assert m["hd95"] == pytest.approx(1.0)
    assert m["asd"] == pytest.approx(5 / 14)

    # spacing (2, 3, 4): the 1-voxel offsets are along axis 0 or cost more along axes 1/2 -> all distances x2
    m = compute_case_metrics(pred, label, num_classes=2, spacing=(2.0, 3.0, 4.0))["1"]
    assert (m["hd95"], m["asd"]) == (pytest.approx(1.0), pytest.approx(5 / 14))
    assert m["hd95_mm"] == pytest.approx(2.0)
    assert m["asd_mm"] == pytest.approx(2 * 5 / 14)

    # spacing (2, 1, 1): the 16 face voxels are 2 mm off, but the 4 inner x=3 voxels are 1 mm from the
    # y/z faces -> ASD = (16*2 + 4*1) * 2 / 112 = 9/14; HD95 = 2 (52nd/53rd of 56 sorted values are 2)
    m = compute_case_metrics(pred, label, num_classes=2, spacing=np.array([2.0, 1.0, 1.0]))["1"]
    assert m["hd95_mm"] == pytest.approx(2.0)
    assert m["asd_mm"] == pytest.approx(9 / 14)


def empty_classes_case() -> tuple[np.ndarray, np.ndarray]:
    """Class 1 in both (identical), 2 in neither, 3 only in the GT, 4 only in the prediction."""
    label = np.zeros((8, 8), dtype=np.int64)
    pred = np.zeros_like(label)
    label[1:3, 1:3] = pred[1:3, 1:3] = 1
    label[5:7, 1:3] = 3
    pred[5:7, 5:7] = 4
    return pred, label


def test_empty_class_conventions():
    pred, label = empty_classes_case()
    m = compute_case_metrics(pred, label, num_classes=5, spacing=(1.0, 1.0))
    assert m["1"]["dice"] == pytest.approx(1.0) and m["1"]["hd95"] == pytest.approx(0.0)
    assert all(math.isnan(v) for k, v in m["2"].items() if k not in ("gt_voxels", "pred_voxels"))
    for c in ("3", "4"):
        assert m[c]["dice"] == 0.0 and m[c]["iou"] == 0.0
        assert all(math.isnan(m[c][k]) for k in ("hd95", "asd", "hd95_mm", "asd_mm"))
    assert (m["3"]["gt_voxels"], m["3"]["pred_voxels"]) == (4, 0)
    assert (m["4"]["gt_voxels"], m["4"]["pred_voxels"]) == (0, 4)


def test_summary_nanmean_and_miss_tallies():
    report = SegmentationReport("unused", ["bg", "a", "b", "c", "d"])
    pred, label = empty_classes_case()
    report.add_case("one", pred, label)
    # second case: class 1 half right (Dice 2*4/(8+4) = 2/3), class 2 perfect, 3 and 4 absent
    label2 = np.zeros((8, 8), dtype=np.int64)
    pred2 = np.zeros_like(label2)
    label2[0:2, 0:4] = 1
    pred2[0:2, 0:2] = 1
    label2[4:6, 4:6] = pred2[4:6, 4:6] = 2
    report.add_case("two", pred2, label2)

    s = report.summary()
    assert s["n_cases"] == 2 and list(s["classes"]) == ["a", "b", "c", "d"]
    a = s["classes"]["a"]["dice"]
    assert a["n"] == 2 and a["mean"] == pytest.approx((1 + 2 / 3) / 2) and a["std"] == pytest.approx((1 - 2 / 3) / 2)
    assert s["classes"]["b"]["dice"] == {"mean": pytest.approx(1.0), "std": pytest.approx(0.0), "n": 1}
    assert s["classes"]["c"]["n_missing"] == 1 and s["classes"]["c"]["n_false_positive"] == 0
    assert s["classes"]["d"]["n_missing"] == 0 and s["classes"]["d"]["n_false_positive"] == 1
    assert s["classes"]["a"]["n_missing"] == 0 and s["classes"]["b"]["n_false_positive"] == 0
    assert math.isnan(s["classes"]["c"]["hd95"]["mean"]) and s["classes"]["c"]["hd95"]["n"] == 0
    # mean over foreground classes of the class means: a 5/6, b 1, c 0, d 0
    assert s["mean"]["dice"] == pytest.approx((5 / 6 + 1 + 0 + 0) / 4)
    assert s["mean"]["hd95"] == pytest.approx(s["classes"]["a"]["hd95"]["mean"] / 2)  # b's HD95 is 0, c/d NaN
    assert "hd95_mm" not in s["mean"]


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_case_and_shapes():
    report = SegmentationReport("unused", ["bg", "fg"])
    with pytest.raises(ValueError, match=r"'patient_7'.*\(4, 4\).*\(4, 5\)"):
        report.add_case("patient_7", np.zeros((4, 4)), np.zeros((4, 5)))
    assert report.cases == []


@pytest.mark.parametrize("which, value", [("label", 2), ("label", -1), ("pred", 5)])
def test_out_of_range_values_name_case(which, value):
    report = SegmentationReport("unused", ["bg", "fg"])
    arrays = {"pred": np.zeros((4, 4), dtype=np.int64), "label": np.zeros((4, 4), dtype=np.int64)}
    arrays[which][1, 1] = value
    with pytest.raises(ValueError, match=rf"'scan_3'.*{which} values must be in \[0, 2\)"):
        report.add_case("scan_3", **arrays)


def test_non_integer_labels_and_bad_spacing_rejected():
    with pytest.raises(ValueError, match="integer label map"):
        compute_case_metrics(np.full((4, 4), 0.5), np.zeros((4, 4)), num_classes=2)
    with pytest.raises(ValueError, match="one value per spatial axis"):
        compute_case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), num_classes=2, spacing=(1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------------
# overlays and files
# ------------------------------------------------------------------------------------------------


def test_save_overlay_png_2d_and_3d(tmp_path):
    pred, label = squares_2d((1, 1))
    save_overlay_png(np.random.rand(10, 10), label, pred, tmp_path / "a" / "two_d.png", ["bg", "square"])
    pred3, label3 = shifted_cube()
    image3 = np.random.rand(1, 10, 10, 10)  # channel-first is accepted
    save_overlay_png(image3, label3, pred3, tmp_path / "three_d.png", axis=0, slice_index=4)
    for path in (tmp_path / "a" / "two_d.png", tmp_path / "three_d.png"):
        assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="spatial shape"):
        save_overlay_png(np.zeros((9, 10)), label, pred, tmp_path / "bad.png")


def test_overlay_keeps_only_the_slice_with_most_foreground():
    label = np.zeros((6, 6, 5), dtype=np.int64)
    label[1:5, 1:5, 3] = 1  # slice 3 along the last axis has the most GT foreground
    label[2:3, 2:3, 1] = 1
    image = np.arange(label.size, dtype=float).reshape(label.shape)
    report = SegmentationReport("unused", ["bg", "fg"], num_overlays=1)
    report.add_case("vol", label, label, image=image)
    report.add_case("vol", label, label, image=image)  # beyond num_overlays: nothing kept
    assert [c["case"] for c in report.cases] == ["vol", "vol_2"]
    ((case_id, (img, lab, prd), index),) = report._overlays
    assert case_id == "vol" and index == 3
    assert img.shape == lab.shape == prd.shape == (6, 6)
    np.testing.assert_array_equal(img, image[..., 3])
    assert img.base is None or img.base is not image  # a copy, not a view holding the volume


def test_write_files_and_json_round_trip(tmp_path):
    report = SegmentationReport(tmp_path / "eval", ["background", "cube", "absent"], num_overlays=1)
    pred, label = shifted_cube()
    report.add_case("no_image", pred, label, spacing=(2.0, 3.0, 4.0))
    report.add_case("with/image", pred, label, image=np.random.rand(10, 10, 10), spacing=(2.0, 3.0, 4.0))
    report.add_case("second_image", pred, label, image=np.random.rand(10, 10, 10))
    paths = report.write(record=RECORD)

    assert sorted(paths) == ["metrics.json", "metrics.md", "overlays/with_image.png"]
    assert open(paths["overlays/with_image.png"], "rb").read(8) == PNG_MAGIC
    assert not (tmp_path / "eval" / "overlays" / "second_image.png").exists()

    text = open(paths["metrics.json"]).read()
    assert "NaN" not in text  # strict JSON: NaN written as null
    data = json.loads(text)
    assert data["record"] == RECORD and data["class_names"] == ["background", "cube", "absent"]
    assert [c["case"] for c in data["cases"]] == ["no_image", "with/image", "second_image"]
    assert data["cases"][0]["metrics"]["cube"]["asd_mm"] == pytest.approx(2 * 5 / 14)
    assert "asd_mm" not in data["cases"][2]["metrics"]["cube"]  # no spacing for this case
    assert data["cases"][0]["metrics"]["absent"]["dice"] is None
    assert data["summary"] == report_module._json_safe(report.summary())
    assert data["summary"]["classes"]["cube"]["hd95_mm"] == {"mean": 2.0, "std": 0.0, "n": 2}
    assert data["summary"]["mean"]["dice"] == pytest.approx(0.75)  # "absent" is never scored

    md = open(paths["metrics.md"]).read()
    assert "| class | n | Dice | IoU | HD95 (vox) | ASD (vox) | HD95 (mm) | ASD (mm) | missed | false pos. |" in md
    assert "| cube | 3 | 0.750 | 0.600 | 1.000 | 0.357 | 2.000 | 0.714 | 0 | 0 |" in md
    assert "| absent | 0 | - | - |" in md
    assert "| **mean (foreground)** | - | 0.750 |" in md
    assert "`pytest tests/test_report.py`" in md and "test-cpu" in md
    assert "![overlays/with_image.png](overlays/with_image.png)" in md


# ------------------------------------------------------------------------------------------------
# ignite handler
# ------------------------------------------------------------------------------------------------


def make_outputs(names: list[str], perfect: bool) -> list[dict]:
    """Decollated evaluator outputs: one-hot MetaTensors of the shifted (or exact) cube, spacing (2, 3, 4)."""
    pred, label = shifted_cube()
    pred = label if perfect else pred
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
    return [
        {
            "pred": one_hot(pred, 2, affine=affine, filename_or_obj=f"/data/{name}.nii.gz"),
            "label": one_hot(label, 2, affine=affine),
            "image": MetaTensor(torch.rand(1, 10, 10, 10)),
        }
        for name in names
    ]


def test_handler_on_ignite_engine_writes_report_and_resets(tmp_path, caplog):
    batches = [make_outputs(["case_a", "case_b"], perfect=False), make_outputs(["case_c"], perfect=False)]
    engine = Engine(lambda e, batch: batch)
    handler = SegmentationReportHandler(tmp_path / "report", ["background", "cube"], num_overlays=2)
    handler.attach(engine)

    with caplog.at_level(logging.INFO, logger=report_module.__name__):
        engine.run(batches, max_epochs=1)
    assert engine.state.metrics["mean_dice"] == pytest.approx(0.75)
    assert "| cube | 3 | 0.750 |" in caplog.text
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [c["case"] for c in data["cases"]] == ["case_a", "case_b", "case_c"]
    assert [c["spacing"] for c in data["cases"]] == [[2.0, 3.0, 4.0]] * 3
    assert data["summary"]["classes"]["cube"]["hd95_mm"]["mean"] == pytest.approx(2.0)
    assert sorted(p.name for p in (tmp_path / "report" / "overlays").iterdir()) == ["case_a.png", "case_b.png"]

    # a second run (new epoch) starts afresh
    engine.run([make_outputs(["case_d"], perfect=True)], max_epochs=1)
    assert engine.state.metrics["mean_dice"] == pytest.approx(1.0)
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert [c["case"] for c in data["cases"]] == ["case_d"]
    assert data["summary"]["n_cases"] == 1


def test_handler_plain_label_maps_get_running_ids_and_no_mm(tmp_path):
    pred, label = squares_2d((2, 2))
    output = [{"pred": torch.as_tensor(pred)[None], "label": label[None]}] * 2  # single-channel maps, no meta
    engine = Engine(lambda e, batch: batch)
    SegmentationReportHandler(tmp_path, ["bg", "square"], metric_name="dsc").attach(engine)
    engine.run([output], max_epochs=1)
    assert engine.state.metrics["dsc"] == pytest.approx(0.25)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [c["case"] for c in data["cases"]] == ["case_0000", "case_0001"]
    assert "hd95_mm" not in data["summary"]["mean"]
    assert not (tmp_path / "overlays").exists()


def test_handler_bad_output_names_case(tmp_path):
    item = {"pred": one_hot(np.zeros((4, 4), dtype=np.int64), 2, filename_or_obj="x/bad_case.png"),
            "label": torch.zeros(4, 5)}  # fmt: skip
    engine = Engine(lambda e, batch: batch)
    SegmentationReportHandler(tmp_path, ["bg", "fg"]).attach(engine)
    with pytest.raises(ValueError, match="'bad_case'"):
        engine.run([[item]], max_epochs=1)


def test_handler_distributed_gathers_and_writes_on_rank_zero_only(tmp_path, monkeypatch):
    other_rank = [{"case": "case_a", "spacing": None, "metrics": {"cube": {"dice": 0.25, "iou": 1 / 7,
                  "hd95": 3.0, "asd": 1.0, "gt_voxels": 64, "pred_voxels": 64}}}]  # fmt: skip

    def fake_all_gather_object(out, obj):
        out[:] = [obj, other_rank]

    monkeypatch.setattr(torch.distributed, "all_gather_object", fake_all_gather_object)
    for rank in (1, 0):
        monkeypatch.setattr(report_module, "_dist_info", lambda rank=rank: (rank, 2))
        engine = Engine(lambda e, batch: batch)
        SegmentationReportHandler(tmp_path / f"rank{rank}", ["background", "cube"]).attach(engine)
        engine.run([make_outputs(["case_a"], perfect=True)], max_epochs=1)
        assert engine.state.metrics["mean_dice"] == pytest.approx((1.0 + 0.25) / 2)
    assert not (tmp_path / "rank1").exists()
    data = json.loads((tmp_path / "rank0" / "metrics.json").read_text())
    assert [c["case"] for c in data["cases"]] == ["case_a", "case_a_2"]


def test_handler_with_monai_supervised_evaluator(tmp_path):
    from monai.engines import SupervisedEvaluator
    from monai.transforms import AsDiscreted

    class OneHotNet(torch.nn.Module):
        """Returns the input label map (channel 0 of the image) as one-hot logits."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).movedim(-1, 1).float()

    label = np.zeros((12, 12), dtype=np.int64)
    label[2:6, 2:6] = 1
    label[8:12, 8:12] = 2
    guess = label.copy()
    guess[2:6, 2:6] = 0
    guess[4:8, 4:8] = 1  # class 1 as in test_dice_iou_of_overlapping_squares: Dice 0.25
    data = [
        {"image": torch.as_tensor(guess)[None].float(), "label": torch.as_tensor(label)[None]},
        {"image": torch.as_tensor(label)[None].float(), "label": torch.as_tensor(label)[None]},
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    post = AsDiscreted(keys=["pred", "label"], argmax=(True, False), to_onehot=3)
    evaluator = SupervisedEvaluator(torch.device("cpu"), loader, OneHotNet(), postprocessing=post)
    SegmentationReportHandler(tmp_path, ["bg", "one", "two"], num_overlays=1).attach(evaluator)
    evaluator.run()
    # class 1: (0.25 + 1) / 2, class 2: 1
    assert evaluator.state.metrics["mean_dice"] == pytest.approx(((0.25 + 1) / 2 + 1) / 2)
    assert (tmp_path / "overlays" / "case_0000.png").read_bytes()[:8] == PNG_MAGIC
