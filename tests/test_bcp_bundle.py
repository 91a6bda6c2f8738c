"""The BCP bundle end to end through ``python -m monai.bundle run``: pre-train -> self-train (and its resume) ->
evaluate -> infer, for the 2D ACDC recipe and the 3D left-atrium variant, on tiny synthetic data.

These check that the workflows run and write well-formed outputs; accuracy is measured by tools/benchmark_bcp.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, check_run, run_bundle, run_torchrun

pytestmark = pytest.mark.slow

CFG = REPO / "bundles" / "bcp_acdc_segmentation" / "configs"
SMALL_2D = ["--synthetic_data#num_unlabeled", "2", "--synthetic_data#num_validation", "1",
            "--synthetic_data#num_test", "2", "--synthetic_data#shape", "[64,64,4]", "--img_size", "64",
            "--epoch_length", "3", "--val_interval", "1"]
SMALL_LA = ["--synthetic_data#num_unlabeled", "2", "--synthetic_data#num_validation", "1",
            "--synthetic_data#num_test", "1", "--synthetic_data#shape", "[40,40,32]", "--patch_size", "[32,32,32]",
            "--n_filters", "4", "--epoch_length", "2", "--val_interval", "1"]


def _cfg(*names: str) -> list[Path]:
    return [CFG / n for n in names]


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bcp2d")
    args = ["--bundle_root", str(root), *SMALL_2D]
    check_run(run_bundle(_cfg("train.json", "pretrain.json", "quick.json"), *args, "--pretrain_epochs", "1",
                      run_id="training"))
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), *args, "--selftrain_epochs", "1", run_id="training"))
    assert "student and teacher initialised from" in out
    return root


def test_2d_pretrain_then_selftrain_write_models_and_resumable_checkpoints(run2d):
    from custom_components.networks.bcp_unet import UNet2D

    for sub in ("models/pretrain", "models"):
        UNet2D(1, 4).load_state_dict(torch.load(run2d / sub / "model.pt", weights_only=True))
    ckpt = torch.load(next((run2d / "models").glob("checkpoint*=1.pt")), weights_only=False)
    assert {"model", "teacher", "optimizer", "lr_scheduler", "trainer"} <= set(ckpt)
    pre = torch.load(next((run2d / "models" / "pretrain").glob("checkpoint*.pt")), weights_only=False)
    assert "teacher" not in pre


def test_2d_selftrain_resumes_student_teacher_and_iteration(run2d):
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), "--bundle_root", str(run2d), *SMALL_2D,
                            "--selftrain_epochs", "2", run_id="training"))
    assert "resuming from" in out and "initialised from" not in out
    assert "Epoch[1]" not in out and "Epoch[2]" in out
    ckpt = torch.load(run2d / "models" / "checkpoint_checkpoint_epoch=2.pt", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 6


def test_2d_evaluate_and_infer(run2d):
    check_run(run_bundle(_cfg("train.json", "evaluate.json", "quick.json"), "--bundle_root", str(run2d), *SMALL_2D))
    report = json.loads((run2d / "eval" / "metrics.json").read_text())
    assert len(report["cases"]) == 2 and set(report["summary"]["classes"]) == {"rv", "myo", "lv"}
    assert {"hd95", "hd95_mm", "asd", "asd_mm"} <= set(report["summary"]["mean"])
    check_run(run_bundle(_cfg("inference.json", "quick.json"), "--bundle_root", str(run2d), "--img_size", "64"))
    datalist = json.loads((run2d / "data" / "acdc" / "dataset.json").read_text())
    preds = sorted((run2d / "eval" / "predictions").glob("*.nii.gz"))
    assert len(preds) == 2
    for item, pred in zip(sorted(datalist["test"], key=lambda i: i["image"]), preds):
        src, out = nib.load(run2d / "data" / "acdc" / item["image"]), nib.load(pred)
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
        assert np.asarray(out.dataobj).max() <= 3


def test_selftrain_without_pretrained_weights_says_what_to_run(tmp_path):
    proc = run_bundle(_cfg("train.json", "quick.json"), "--bundle_root", str(tmp_path), *SMALL_2D,
                      "--selftrain_epochs", "1")
    assert proc.returncode != 0
    assert "run the pre-training workflow first" in proc.stdout + proc.stderr


def test_la_pretrain_selftrain_evaluate_infer(tmp_path):
    args = ["--bundle_root", str(tmp_path), *SMALL_LA]
    check_run(run_bundle(_cfg("train.json", "train_la.json", "pretrain.json", "quick_la.json"), *args,
                      "--pretrain_epochs", "1", run_id="training"))
    check_run(run_bundle(_cfg("train.json", "train_la.json", "quick_la.json"), *args, "--selftrain_epochs", "1",
                      run_id="training"))
    ckpt = torch.load(next((tmp_path / "models").glob("checkpoint*=1.pt")), weights_only=False)
    assert "teacher" in ckpt and any(k.startswith("encoder.block_one") for k in ckpt["teacher"])
    check_run(run_bundle(_cfg("train.json", "train_la.json", "evaluate.json", "evaluate_la.json", "quick_la.json"), *args))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(report["summary"]["classes"]) == ["left_atrium"]
    check_run(run_bundle(_cfg("inference.json", "inference_la.json", "quick_la.json"), "--bundle_root", str(tmp_path),
                      "--patch_size", "[32,32,32]", "--n_filters", "4"))
    preds = list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))
    assert len(preds) == 1 and nib.load(preds[0]).shape == (40, 40, 32)
    assert set(np.unique(np.asarray(nib.load(preds[0]).dataobj))) <= {0, 1}


def test_multi_gpu_config_self_trains_with_two_cpu_processes(tmp_path):
    args = ["--bundle_root", str(tmp_path), *SMALL_2D, "--synthetic_data#num_validation", "2",
            "--synthetic_data#num_unlabeled", "4"]
    check_run(run_bundle(_cfg("train.json", "pretrain.json", "quick.json"), *args, "--pretrain_epochs", "1"))
    proc = run_torchrun(_cfg("train.json", "multi_gpu_train.json", "quick.json"), *args, "--selftrain_epochs", "1",
                        port=29571)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend gloo, rank 1 of 2" in out
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
