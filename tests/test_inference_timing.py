"""The inference timing of tools/benchmark_inference.py (custom_components.engines.timing): what is counted, never how
long anything takes.

In process, on a small deterministic sliding-window evaluator: the network calls counted by the forward hooks are the
ones the sliding window makes for the input size, the phases are all there, none is negative and they add up to the
total, transform times come back from data-loader workers, and the timed composes leave ``Invertd`` working. Then the
overlay on every bundle's config, and the tool itself on one 2D and one 3D bundle (``--quick``)."""

from __future__ import annotations

import json
import math
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, bundle_names

from custom_components.engines import StagedOutputDir
from custom_components.engines.timing import PHASES, InferenceTimer, split_phases, timing_overlay

sys.path.insert(0, str(REPO / "tools"))

import benchmark_inference as bi  # noqa: E402

SHAPE = (20, 16, 12)
ROI, OVERLAP, SW_BATCH = (8, 8, 8), 0.5, 5


def expected_windows(shape, roi, overlap) -> int:
    """Windows of MONAI's sliding window: per axis, steps of ``int(roi * (1 - overlap))`` until a window reaches the
    end (an axis shorter than the window is padded to it: one window)."""
    total = 1
    for size, r in zip(shape, roi):
        step = max(int(r * (1 - overlap)), 1)
        total *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return total


def run_small_workflow(tmp_path, num_workers: int = 0) -> tuple[dict, dict]:
    """A sliding-window evaluator over one NIfTI volume, timed as the overlay times a bundle; returns the record
    and the output file's shape and the input's."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (Activationsd, AsDiscreted, Compose, Invertd, LoadImaged, Resized,
                                  SaveImaged, ScaleIntensityd)

    image = tmp_path / "volume.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((24, 20, 12)).astype(np.float32), np.diag([1.5, 1.5, 3.0, 1.0])), str(image))
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    timer = InferenceTimer(tmp_path / "timing.json", network=net)
    pre = Compose([LoadImaged(keys="image", ensure_channel_first=True), ScaleIntensityd(keys="image"),
                   Resized(keys="image", spatial_size=SHAPE, mode="trilinear")])
    staged = StagedOutputDir(tmp_path / "predictions")
    post = Compose([Activationsd(keys="pred", softmax=True),
                    Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
                    AsDiscreted(keys="pred", argmax=True),
                    SaveImaged(keys="pred", output_dir=staged.path, output_postfix="seg", separate_folder=False,
                               output_dtype=np.uint8, resample=False, print_log=False)])
    loader = DataLoader(Dataset([{"image": str(image)}], transform=timer.timed(pre, "preprocessing")), batch_size=1,
                        num_workers=num_workers)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=loader, network=net,
                                    inferer=SlidingWindowInferer(ROI, sw_batch_size=SW_BATCH, overlap=OVERLAP),
                                    postprocessing=timer.timed(post, "postprocessing"), val_handlers=[timer])
    timer.watch_commit(staged)
    staged.run(evaluator)
    record = timer.finish()
    written = nib.load(tmp_path / "predictions" / "volume_seg.nii.gz").shape
    return record, {"written": written, "input": nib.load(image).shape}


def check_split(split: dict) -> None:
    """Every phase present and not negative (``rest`` to rounding), the phases adding up to the total, the start-up
    steps adding up to the start-up."""
    assert set(split["phases"]) == set(PHASES)
    for name, value in split["phases"].items():
        assert value is not None and value >= -1e-6, (name, value)
    assert sum(split["phases"].values()) == pytest.approx(split["total"], abs=1e-9)
    assert sum(s for _, s in split["startup_detail"]) == pytest.approx(split["phases"]["startup"], abs=1e-9)
    assert split["after_startup"] == pytest.approx(split["total"] - split["phases"]["startup"])


def test_forward_calls_are_the_sliding_windows_and_phases_add_up(tmp_path):
    record, shapes = run_small_workflow(tmp_path)
    assert shapes["written"] == shapes["input"]  # Invertd still inverts the (untouched) preprocessing
    windows = expected_windows(SHAPE, ROI, OVERLAP)
    assert windows == 4 * 3 * 2
    calls = record["iterations"][0]["calls"]
    assert [c["items"] for c in calls] == [SW_BATCH] * (windows // SW_BATCH) + [windows % SW_BATCH]
    assert all(c["shape"][2:] == list(ROI) for c in calls)
    assert record["iterations"][0]["shape"] == [1, 1, *SHAPE]
    assert record["forward_flags"] == {"grad": [False], "inference_mode": [False], "train_mode": [False]}

    split = split_phases(record, process_start=record["marks"]["imports"])
    check_split(split)
    assert split["forward_calls"] == math.ceil(windows / SW_BATCH) and split["forward_items"] == windows
    pre, post = record["transforms"]["preprocessing"], record["transforms"]["postprocessing"]
    assert {n: (v["kind"], v["calls"], v["process"]) for n, v in pre.items()} == {
        "0:LoadImaged": ("reading", 1, "main"), "1:ScaleIntensityd": ("preprocessing", 1, "main"),
        "2:Resized": ("preprocessing", 1, "main")}
    assert [(n, v["kind"]) for n, v in post.items()] == [
        ("0:Activationsd", "postprocessing"), ("1:Invertd", "postprocessing"), ("2:AsDiscreted", "postprocessing"),
        ("3:SaveImaged", "writing")]
    # in this process the reading and preprocessing phases are the transforms' own times
    assert split["phases"]["reading"] == pytest.approx(pre["0:LoadImaged"]["seconds"])
    assert split["total"] == pytest.approx(record["marks"]["commit_completed"] - record["marks"]["imports"])
    assert json.loads((tmp_path / "timing.json").read_text())["iterations"][0]["calls"] == calls


def test_transform_times_come_back_from_loader_workers(tmp_path):
    record, shapes = run_small_workflow(tmp_path, num_workers=1)
    assert shapes["written"] == shapes["input"]
    pre = record["transforms"]["preprocessing"]
    assert {v["process"] for v in pre.values()} == {"workers"} and all(v["calls"] == 1 for v in pre.values())
    split = split_phases(record, process_start=record["marks"]["imports"])
    check_split(split)
    # the wait for the batch is split between reading and preprocessing in proportion to the workers' times
    assert split["phases"]["reading"] + split["phases"]["preprocessing"] == pytest.approx(split["data_wait"])
    share = pre["0:LoadImaged"]["seconds"] / sum(v["seconds"] for v in pre.values())
    assert split["phases"]["reading"] == pytest.approx(share * split["data_wait"])


def test_split_of_a_known_record():
    """Made-up times: each phase comes out of the marks and durations it is defined by."""
    record = {
        "marks": {"process_start": 100.0, "imports": 103.0, "engine_started": 104.5, "epoch_started": 105.0,
                  "first_get_batch": 105.25, "engine_completed": 120.0, "commit_started": 120.5,
                  "commit_completed": 121.0, "finished": 121.0},
        "initialize": [["initialize 0: check_datalist", 103.5], ["initialize done", 104.0]],
        "iterations": [
            {"wait": 2.0, "started": 108.0, "forward_completed": 112.0, "model_completed": 113.0,
             "calls": [{"seconds": 1.5, "items": 4}, {"seconds": 1.5, "items": 2}]},
            {"wait": 1.0, "started": 114.0, "forward_completed": 117.0, "model_completed": 119.0,
             "calls": [{"seconds": 2.0, "items": 4}]},
        ],
        "transforms": {
            "preprocessing": {"0:LoadImaged": {"calls": 2, "seconds": 1.0, "kind": "reading", "process": "workers"},
                              "1:Spacingd": {"calls": 2, "seconds": 3.0, "kind": "preprocessing",
                                             "process": "workers"}},
            "postprocessing": {"0:Invertd": {"calls": 2, "seconds": 2.0, "kind": "postprocessing",
                                             "process": "main"},
                               "1:SaveImaged": {"calls": 2, "seconds": 0.75, "kind": "writing", "process": "main"}},
        },
    }
    split = split_phases(record, process_end=123.0)
    assert split["phases"] == pytest.approx({
        "startup": 5.0, "loader_start": 0.25, "reading": 0.75, "preprocessing": 2.25, "forward": 5.0,
        "inferer_other": 2.0, "postprocessing": 2.25, "writing": 1.25, "rest": 2.25})
    assert split["total"] == 21.0 and split["exit"] == 2.0 and split["process_total"] == 23.0
    assert split["after_startup"] == 16.0 and split["after_startup_over_forward"] == pytest.approx(16.0 / 5.0)
    assert split["forward_calls"] == 3 and split["forward_items"] == 10
    assert [step for step, _ in split["startup_detail"]][2:4] == ["initialize 0: check_datalist",
                                                                  "building the network, data loader, inferer and "
                                                                  "evaluator"]
    assert [s for _, s in split["startup_detail"]] == pytest.approx([3.0, 0.5, 0.5, 0.5, 0.5])


@pytest.mark.parametrize("name", bundle_names())
def test_overlay_hooks_into_every_bundle(name, tmp_path):
    """The overlay parses with each bundle's inference config and wraps what it should, leaving the rest alone."""
    from monai.bundle import ConfigParser

    configs = bi.config_files(name, quick=False)
    merged = bi.merged_config(configs)
    overlay = timing_overlay(merged, tmp_path / "timing.json")
    (tmp_path / "overlay.json").write_text(json.dumps(overlay))
    parser = ConfigParser()
    parser.read_config([*map(str, configs), str(tmp_path / "overlay.json")])
    parser.parse()
    assert parser["handlers"][0] == "@inference_timer" and parser["handlers"][1:] == merged["handlers"]
    assert parser["dataset"]["transform"] == "$@inference_timer.timed(@preprocessing, 'preprocessing')"
    assert parser["evaluator"]["postprocessing"] == "$@inference_timer.timed(@postprocessing, 'postprocessing')"
    assert parser["initialize"][1::2] == merged["initialize"]
    assert all(".mark(" in m for m in parser["initialize"][0::2])
    assert parser["run"][-1] == "$@inference_timer.finish()" and merged["run"][0] in parser["run"]
    assert parser["imports"][0].startswith("$import custom_components.engines.timing")
    assert parser["imports"][1:] == merged["imports"]
    assert parser["preprocessing"] == merged["preprocessing"] and parser["network_def"] == merged["network_def"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lvit_qata_covid19_segmentation", "voco_btcv_segmentation"])
def test_tool_times_a_quick_bundle_run(name, tmp_path):
    """The tool end to end on a 2D and a 3D bundle in ``--quick`` mode: one prediction per item, every phase, and as
    many network calls as the inferer makes for the input it was given."""
    result = bi.measure_bundle(name, tmp_path, quick=True, job={**bi.JOBS["quick"], "num_images": 2},
                               timeout=600)
    run = result["runs"][0]
    assert run["outputs"] == result["items"] == (2 if name.startswith("lvit") else 1)
    check_split(run["split"])
    split = run["split"]
    assert split["phases"]["forward"] > 0 and split["exit"] >= 0 and split["process_total"] >= split["total"]
    config = bi.merged_config(bi.config_files(name, quick=True))
    if name.startswith("voco"):
        shape = run["input_shapes"][0][2:]
        windows = expected_windows(shape, config["roi"], config["sw_overlap"])
        assert split["forward_items"] == windows
        assert split["forward_calls"] == math.ceil(windows / config["sw_batch_size"])
    else:
        assert split["forward_calls"] == split["forward_items"] == 2  # SimpleInferer, one image per batch
    assert [s for s, _ in split["startup_detail"] if s.startswith("initialize")] == [
        f"initialize {i}: {bi_step}" for i, bi_step in enumerate(_steps(config["initialize"]))]
    md = bi.report_markdown({"record": {"command": "test", "date": "-", "hardware": {}}, "setting": "quick",
                             "repeats": 1, "weights": "random", "load": {"note": "-"}, "bundles": [result]})
    assert f"## {name}" in md and "forward calls (items)" in md


def _steps(expressions) -> list[str]:
    from custom_components.engines.timing import _step_name

    return [_step_name(e) for e in expressions]
