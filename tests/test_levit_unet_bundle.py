"""The LeViT-UNet bundle end to end through ``python -m monai.bundle run``, as a user runs it.

One short training (tiny synthetic dataset, a few iterations), its resume, evaluation, inference, bad input, and
two-process ``torchrun`` training on CPU (gloo). These check that the workflows run and produce well-formed
outputs; the accuracy of the quick recipe is measured by the demo, not asserted here.
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

BUNDLE = REPO / "bundles" / "levit_unet_synapse_segmentation"
CFG = BUNDLE / "configs"
TRAIN = [CFG / "train.json", CFG / "quick.json"]
SMALL_DATA = ["--synthetic_data#num_training", "3", "--synthetic_data#num_validation", "1",
              "--synthetic_data#num_test", "2"]
SHORT = ["--epoch_length", "2", "--val_interval", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A bundle root with a model trained for 2 short epochs by the exact README command (``run training``)."""
    root = tmp_path_factory.mktemp("levit_run")
    check_run(run_bundle(TRAIN, "--bundle_root", str(root), "--max_epochs", "2", *SHORT, *SMALL_DATA, run_id="training"))
    return root


def test_training_writes_plain_state_dict_and_resume_checkpoint(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    from custom_components.networks import LeViTUNet

    quick = json.loads((CFG / "quick.json").read_text())
    net = LeViTUNet("128s", 1, 9, img_size=quick["img_size"], decoder_channels=quick["decoder_channels"])
    net.load_state_dict(state)  # strict: every key of the network, nothing else
    ckpts = sorted(p.name for p in (trained / "models").glob("checkpoint*.pt"))
    assert len(ckpts) == 1 and ckpts[0].endswith("=2.pt"), ckpts
    full = torch.load(trained / "models" / ckpts[0], weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(full)
    assert full["trainer"]["iteration"] == 2 * 2  # 2 epochs of 2 iterations (SHORT)


def test_training_resumes_where_it_stopped(trained):
    out = check_run(run_bundle(TRAIN, "--bundle_root", str(trained), "--max_epochs", "3", *SHORT, *SMALL_DATA))
    assert "resuming from" in out
    assert "Epoch[1]" not in out and "Epoch[3]" in out, out[-3000:]
    assert (trained / "models" / "checkpoint_checkpoint_epoch=3.pt").is_file()
    assert not (trained / "models" / "checkpoint_checkpoint_epoch=2.pt").exists()


def test_evaluation_writes_report(trained):
    check_run(run_bundle([CFG / "train.json", CFG / "evaluate.json", CFG / "quick.json"], "--bundle_root", str(trained),
                      *SMALL_DATA))
    report = json.loads((trained / "eval" / "metrics.json").read_text())
    assert len(report["cases"]) == 2
    organs = set(report["summary"]["classes"]) if "classes" in report["summary"] else set(report["summary"])
    for organ in ("aorta", "liver", "spleen", "stomach"):
        assert any(organ in str(k) for k in organs), organs
    assert (trained / "eval" / "metrics.md").is_file()
    assert len(list((trained / "eval" / "overlays").glob("*.png"))) == 2


def test_inference_writes_volumes_with_input_geometry(trained):
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), *SMALL_DATA))
    datalist = json.loads((trained / "data" / "synapse" / "dataset.json").read_text())
    preds = sorted((trained / "eval" / "predictions").glob("*.nii.gz"))
    assert len(preds) == len(datalist["test"]) == 2
    for item, pred in zip(sorted(datalist["test"], key=lambda i: i["image"]), preds):
        src = nib.load(trained / "data" / "synapse" / item["image"])
        out = nib.load(pred)
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
        values = np.unique(np.asarray(out.dataobj))
        assert values.min() >= 0 and values.max() <= 8


def test_inference_on_bad_input_stops_before_writing(trained, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "scan_corrupt.nii.gz").write_bytes(b"not an image")
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(folder / "scan_2d.nii.gz"))
    out_dir = tmp_path / "predictions"
    proc = run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), "--input", str(folder),
                      "--output_dir", str(out_dir))
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "scan_corrupt.nii.gz: unreadable" in err
    assert "scan_2d.nii.gz: has 2 dimensions [32, 32], expected a 3D image" in err
    assert not out_dir.exists()


def test_training_on_bad_label_stops_before_writing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    img = np.zeros((16, 16, 4), np.float32)
    nib.save(nib.Nifti1Image(img, np.eye(4)), str(data / "img.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((16, 16, 4), 11, np.uint8), np.eye(4)), str(data / "lab.nii.gz"))
    item = {"image": "img.nii.gz", "label": "lab.nii.gz"}
    (data / "dataset.json").write_text(json.dumps({"training": [item], "validation": [item], "test": [item]}))
    proc = run_bundle(TRAIN, "--bundle_root", str(tmp_path), "--dataset_dir", str(data))
    assert proc.returncode != 0
    assert "lab.nii.gz: label values outside the class range 0..8: 11" in proc.stdout + proc.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


def test_multi_gpu_config_runs_two_cpu_processes(tmp_path):
    proc = run_torchrun([CFG / "train.json", CFG / "multi_gpu_train.json", CFG / "quick.json"],
                        "--bundle_root", str(tmp_path), "--max_epochs", "1", *SHORT, *SMALL_DATA,
                        "--synthetic_data#num_validation", "2", port=29533)  # a distributed sampler needs an item per rank
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend gloo, rank 1 of 2" in out and "backend gloo, rank 0 of 2" in out
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DDP
