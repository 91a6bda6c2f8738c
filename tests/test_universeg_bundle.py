"""The UniverSeg bundle end to end through ``python -m monai.bundle run``: training (tiny), evaluation on held-out
tasks, inference with a support folder (2D and 3D targets, two labels), and a bad support folder stopping the run
before anything is written. Accuracy is measured by tools/benchmark_universeg.py, not asserted here."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, check_run, run_bundle, run_torchrun

pytestmark = pytest.mark.slow

BUNDLE = REPO / "bundles" / "universeg_fewshot_segmentation"
CFG = BUNDLE / "configs"
TRAIN = [CFG / "train.json", CFG / "quick.json"]
TINY = ["--synthetic_data#num_heldout_tasks", "2", "--synthetic_data#images_per_task", "8",
        "--synthetic_data#num_inference_targets", "2", "--synthetic_data#num_inference_support", "4",
        "--synthetic_data#size", "32", "--img_size", "32", "--encoder_channels", "[8,8,8,8]",
        "--decoder_channels", "[8,8,8]", "--support_size", "2", "--val_support_size", "2", "--num_val_episodes", "4",
        "--num_train_tasks", "20", "--images_per_task", "8", "--batch_size", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("universeg_run")
    check_run(run_bundle(TRAIN, "--bundle_root", str(root), "--max_epochs", "1", "--epoch_length", "2",
                      "--val_interval", "1", *TINY, run_id="training"))
    return root


def test_training_writes_plain_state_dict(trained):
    from custom_components.networks.universeg import UniverSeg

    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    UniverSeg((8,) * 4, (8,) * 3).load_state_dict(state)
    assert len(list((trained / "models").glob("checkpoint*.pt"))) == 1
    dl = json.loads((trained / "data" / "fewshot" / "dataset.json").read_text())
    assert all(i["task"].split("/")[1] in ("crescent", "tube") for i in dl["validation"])


def test_evaluation_report(trained):
    check_run(run_bundle([CFG / "train.json", CFG / "evaluate.json", CFG / "quick.json"], "--bundle_root", str(trained),
                      "--num_eval_episodes", "4", *TINY))
    report = json.loads((trained / "eval" / "metrics.json").read_text())
    assert len(report["cases"]) == 4
    assert (trained / "eval" / "metrics.md").is_file()


def test_inference_with_support_folder_2d_and_3d(trained, tmp_path):
    rng = np.random.default_rng(0)
    targets, support = tmp_path / "targets", tmp_path / "support"
    targets.mkdir()
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(rng.random((40, 36, 5)).astype(np.float32), affine), str(targets / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(rng.random((30, 30)).astype(np.float32), np.eye(4)), str(targets / "img2d.nii.gz"))
    for k in range(3):
        (support / "images").mkdir(parents=True, exist_ok=True)
        (support / "labels").mkdir(parents=True, exist_ok=True)
        lab = np.zeros((24, 24), np.uint8)
        lab[3:9, 3:9], lab[12:20, 12:20] = 1, 2
        nib.save(nib.Nifti1Image(rng.random((24, 24)).astype(np.float32), np.eye(4)), str(support / "images" / f"s{k}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(support / "labels" / f"s{k}.nii.gz"))
    out = tmp_path / "pred"
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), "--input",
                      str(targets), "--support_dir", str(support), "--output_dir", str(out), "--num_ensemble", "2",
                      "--img_size", "32", "--encoder_channels", "[8,8,8,8]", "--decoder_channels", "[8,8,8]",
                      "--support_size", "2"))
    vol = nib.load(out / "vol_seg.nii.gz")
    assert vol.shape == (40, 36, 5)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(vol.dataobj))) <= {0, 1, 2}
    assert nib.load(out / "img2d_seg.nii.gz").shape == (30, 30)


def test_inference_default_support_folder(trained):
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), *TINY[:10],
                      "--img_size", "32", "--encoder_channels", "[8,8,8,8]", "--decoder_channels", "[8,8,8]",
                      "--support_size", "2"))
    preds = sorted((trained / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 2 and nib.load(preds[0]).shape == (32, 32)


def test_bad_support_folder_stops_before_writing(trained, tmp_path):
    support = tmp_path / "support"
    (support / "images").mkdir(parents=True)
    (support / "labels").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(support / "images" / "a.nii.gz"))
    out = tmp_path / "pred"
    proc = run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), "--support_dir",
                      str(support), "--output_dir", str(out), "--img_size", "32", "--encoder_channels", "[8,8,8,8]",
                      "--decoder_channels", "[8,8,8]")
    assert proc.returncode != 0
    assert "support image without label" in proc.stdout + proc.stderr
    assert not out.exists()


def test_multi_gpu_config_runs_two_cpu_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo); DDP must tolerate the unused last support branch."""
    proc = run_torchrun([CFG / "train.json", CFG / "multi_gpu_train.json", CFG / "quick.json"],
                        "--bundle_root", str(tmp_path), "--max_epochs", "1", "--epoch_length", "2",
                        "--val_interval", "1", *TINY, port=29537)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend gloo, rank 1 of 2" in out
    assert (tmp_path / "models" / "model.pt").is_file()
