"""The BCP bundle end to end through ``python -m monai.bundle run``: the two-stage recipe in one command
(``train.json``: pre-train -> self-train) and its resume, one stage alone (``--stage pretrain|selftrain``), evaluate,
infer, for the 2D ACDC recipe and the 3D left-atrium variant, on tiny synthetic data.

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
BOTH = "running stage 1 (copy-paste pre-training) then stage 2 (bidirectional self-training)"
STAGE1_RUNS = "stage 1 (copy-paste pre-training): "
STAGE2_RUNS = "stage 2 (bidirectional self-training): "


def _cfg(*names: str) -> list[Path]:
    return [CFG / n for n in names]


@pytest.fixture(scope="module")
def run2d(tmp_path_factory) -> tuple[Path, str]:
    """The whole recipe, as a user runs it: ``train.json`` + the quick overlay, nothing else."""
    root = tmp_path_factory.mktemp("bcp2d")
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), "--bundle_root", str(root), *SMALL_2D,
                               "--pretrain_epochs", "1", "--selftrain_epochs", "1", run_id="training"))
    return root, out


def test_2d_one_command_runs_stage1_then_stage2(run2d):
    from custom_components.networks.bcp_unet import UNet2D

    root, out = run2d
    assert BOTH in out and STAGE1_RUNS in out and STAGE2_RUNS in out
    assert out.index("stage 1 (copy-paste pre-training) finished") < out.index("student and teacher initialised from")
    assert "optimizer momentum initialised from" in out  # official ACDC: stage 2 continues stage 1's momentum
    for sub in ("models/pretrain", "models"):
        UNet2D(1, 4).load_state_dict(torch.load(root / sub / "model.pt", weights_only=True))
    assert torch.load(root / "models" / "pretrain" / "optimizer.pt", weights_only=True)["state"]
    ckpt = torch.load(next((root / "models").glob("checkpoint*=1.pt")), weights_only=False)
    assert {"model", "teacher", "optimizer", "lr_scheduler", "trainer"} <= set(ckpt)
    pre = torch.load(next((root / "models" / "pretrain").glob("checkpoint*.pt")), weights_only=False)
    assert "teacher" not in pre and {"model", "optimizer", "trainer"} <= set(pre)


def test_2d_rerun_keeps_finished_stage1_and_resumes_stage2(run2d):
    root, _ = run2d
    stage1 = (root / "models" / "pretrain" / "model.pt").read_bytes()
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), "--bundle_root", str(root), *SMALL_2D,
                               "--pretrain_epochs", "1", "--selftrain_epochs", "2", run_id="training"))
    assert "stage 1 (pre-training) already finished" in out and STAGE1_RUNS not in out
    assert (root / "models" / "pretrain" / "model.pt").read_bytes() == stage1
    assert "resuming from" in out and "initialised from" not in out
    assert "Epoch[1]" not in out and "Epoch[2]" in out
    ckpt = torch.load(root / "models" / "checkpoint_checkpoint_epoch=2.pt", weights_only=False)
    assert ckpt["trainer"]["iteration"] == 6


def test_2d_evaluate_and_infer(run2d):
    root, _ = run2d
    check_run(run_bundle(_cfg("train.json", "evaluate.json", "quick.json"), "--bundle_root", str(root), *SMALL_2D))
    report = json.loads((root / "eval" / "metrics.json").read_text())
    assert len(report["cases"]) == 2 and set(report["summary"]["classes"]) == {"rv", "myo", "lv"}
    assert {"hd95", "hd95_mm", "asd", "asd_mm"} <= set(report["summary"]["mean"])
    check_run(run_bundle(_cfg("inference.json", "quick.json"), "--bundle_root", str(root), "--img_size", "64"))
    datalist = json.loads((root / "data" / "acdc" / "dataset.json").read_text())
    preds = sorted((root / "eval" / "predictions").glob("*.nii.gz"))
    assert len(preds) == 2
    for item, pred in zip(sorted(datalist["test"], key=lambda i: i["image"]), preds):
        src, out = nib.load(root / "data" / "acdc" / item["image"]), nib.load(pred)
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
        assert np.asarray(out.dataobj).max() <= 3


def test_one_stage_alone_and_an_interrupted_stage1(tmp_path):
    args = ["--bundle_root", str(tmp_path), *SMALL_2D]
    proc = run_bundle(_cfg("train.json", "quick.json"), *args, "--stage", "selftrain", "--selftrain_epochs", "1")
    assert proc.returncode != 0
    assert "run the pre-training first" in proc.stdout + proc.stderr
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), *args, "--stage", "pretrain",
                               "--pretrain_epochs", "1"))
    assert STAGE1_RUNS in out and STAGE2_RUNS not in out
    assert (tmp_path / "models" / "pretrain" / "model.pt").is_file() and not (tmp_path / "models" / "model.pt").exists()
    out = check_run(run_bundle(_cfg("train.json", "pretrain.json", "quick.json"), *args, "--pretrain_epochs", "1"))
    assert "nothing to do" in out and STAGE1_RUNS not in out  # pretrain.json = --stage pretrain
    # stage 1 interrupted after its first epoch (no final weights yet): the recipe resumes it, then runs stage 2
    (tmp_path / "models" / "pretrain" / "model.pt").unlink()
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), *args, "--pretrain_epochs", "2",
                               "--selftrain_epochs", "1", run_id="training"))
    assert BOTH in out and "resuming from" in out and "pretrain/checkpoint_checkpoint_epoch=1.pt" in out
    pre = torch.load(tmp_path / "models" / "pretrain" / "checkpoint_checkpoint_epoch=2.pt", weights_only=False)
    assert pre["trainer"]["iteration"] == 6
    assert (tmp_path / "models" / "model.pt").is_file()


def test_la_recipe_evaluate_infer(tmp_path):
    args = ["--bundle_root", str(tmp_path), *SMALL_LA]
    out = check_run(run_bundle(_cfg("train.json", "train_la.json", "quick_la.json"), *args, "--pretrain_epochs", "1",
                               "--selftrain_epochs", "1", run_id="training"))
    assert BOTH in out and "optimizer momentum initialised" not in out  # official LA: weights only
    ckpt = torch.load(next((tmp_path / "models").glob("checkpoint*=1.pt")), weights_only=False)
    assert "teacher" in ckpt and any(k.startswith("encoder.block_one") for k in ckpt["teacher"])
    check_run(run_bundle(_cfg("train.json", "train_la.json", "evaluate.json", "evaluate_la.json", "quick_la.json"),
                         *args))
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(report["summary"]["classes"]) == ["left_atrium"] and report["empty_distance"] == "zero"
    check_run(run_bundle(_cfg("inference.json", "inference_la.json", "quick_la.json"), "--bundle_root", str(tmp_path),
                         "--patch_size", "[32,32,32]", "--n_filters", "4"))
    preds = list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))
    assert len(preds) == 1 and nib.load(preds[0]).shape == (40, 40, 32)
    assert set(np.unique(np.asarray(nib.load(preds[0]).dataobj))) <= {0, 1}


def test_multi_gpu_config_runs_the_recipe_with_two_cpu_processes(tmp_path):
    # batch_size is per process: 2 labeled patients x 4 slices = 4 slices per process
    args = ["--bundle_root", str(tmp_path), *SMALL_2D, "--synthetic_data#num_validation", "2",
            "--synthetic_data#num_unlabeled", "4", "--batch_size", "4"]
    proc = run_torchrun(_cfg("train.json", "multi_gpu_train.json", "quick.json"), *args, "--pretrain_epochs", "1",
                        "--selftrain_epochs", "1", port=29571)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend gloo, rank 1 of 2" in out and BOTH in out
    for sub in ("models/pretrain", "models"):
        state = torch.load(tmp_path / sub / "model.pt", weights_only=True)
        assert not any(k.startswith("module.") for k in state)
