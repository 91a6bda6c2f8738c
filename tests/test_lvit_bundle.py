"""The LViT bundle end to end through ``python -m monai.bundle run``, as a user runs it.

Both workflows (supervised ``train.json`` and semi-supervised ``train.json + train_semi.json``) train for a few
iterations on a tiny synthetic dataset, then evaluate and infer; the semi-supervised run is resumed to check that the
EPI pseudo labels come back from the checkpoint; inference runs with the datalist's text, with one ``--text`` for a
single image, in the explicit no-text mode, and stops with a clear error for an image without text. Two-process
``torchrun`` training runs on CPU (gloo). Accuracy is measured by tools/benchmark_lvit.py, not asserted here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, check_run, run_bundle, run_torchrun

pytestmark = pytest.mark.slow

BUNDLE = REPO / "bundles" / "lvit_qata_covid19_segmentation"
CFG = BUNDLE / "configs"
TRAIN = [CFG / "train.json", CFG / "quick.json"]
SEMI = [CFG / "train.json", CFG / "train_semi.json", CFG / "quick.json"]
SMALL_DATA = ["--synthetic_data#num_training", "8", "--synthetic_data#num_validation", "2",
              "--synthetic_data#num_test", "3", "--synthetic_data#size", "64"]
SHORT = ["--epoch_length", "2", "--val_interval", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A bundle root with a model trained (supervised) for 2 short epochs by the README command."""
    root = tmp_path_factory.mktemp("lvit_sup")
    check_run(run_bundle(TRAIN, "--bundle_root", str(root), "--max_epochs", "2", *SHORT, *SMALL_DATA, run_id="training"))
    return root


@pytest.fixture(scope="module")
def semi(tmp_path_factory) -> tuple[Path, str]:
    """A bundle root trained by the semi-supervised workflow: 1 labeled-only epoch, then 1 EPI + LV epoch."""
    root = tmp_path_factory.mktemp("lvit_semi")
    out = check_run(run_bundle(SEMI, "--bundle_root", str(root), "--max_epochs", "2", "--labeled_epochs", "1", *SHORT,
                               *SMALL_DATA, run_id="training"))
    return root, out


def test_supervised_training_writes_plain_state_dict(trained, user_cache_dir):
    from custom_components.networks import LViT

    quick = json.loads((CFG / "quick.json").read_text())
    net = LViT(img_size=quick["img_size"], base_channels=quick["base_channels"], text_dim=384)
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))  # strict
    ckpts = sorted(p.name for p in (trained / "models").glob("checkpoint*.pt"))
    assert len(ckpts) == 1 and ckpts[0].endswith("=2.pt"), ckpts
    assert any((user_cache_dir / "custom_components" / "text_embeddings").rglob("*.pt"))  # cached per user
    assert not [p for p in trained.rglob("*") if "text_embeddings" in p.parts]  # never inside the bundle


def test_supervised_evaluation_writes_report(trained):
    check_run(run_bundle([CFG / "train.json", CFG / "evaluate.json", CFG / "quick.json"], "--bundle_root", str(trained),
                         *SMALL_DATA))
    report = json.loads((trained / "eval" / "metrics.json").read_text())
    assert len(report["cases"]) == 3 and "infection" in report["summary"]["classes"]
    assert (trained / "eval" / "metrics.md").is_file()


def test_inference_writes_masks_with_input_geometry(trained):
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), *SMALL_DATA))
    preds = sorted((trained / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 3
    for pred in preds:
        out = np.asarray(nib.load(pred).dataobj)
        assert out.shape == (64, 64) and set(np.unique(out)) <= {0, 1}


def test_inference_single_image_with_text_and_no_text_mode(trained, tmp_path):
    src = next((trained / "data" / "qata" / "Test_Folder" / "img").glob("*.png"))
    image = tmp_path / "incoming" / "patient_x.png"
    image.parent.mkdir()
    shutil.copy(src, image)
    out_dir = tmp_path / "pred_text"
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), "--input",
                         str(image), "--output_dir", str(out_dir), "--text",
                         "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."))
    assert (out_dir / "patient_x_seg.nii.gz").is_file()
    out_none = tmp_path / "pred_none"
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), "--input",
                         str(image), "--output_dir", str(out_none), "--text_mode", "none"))
    assert (out_none / "patient_x_seg.nii.gz").is_file()


def test_inference_without_text_stops_naming_the_image(trained, tmp_path):
    src = next((trained / "data" / "qata" / "Test_Folder" / "img").glob("*.png"))
    image = tmp_path / "no_text_here.png"
    shutil.copy(src, image)
    out_dir = tmp_path / "predictions"
    proc = run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(trained), "--input", str(image),
                      "--output_dir", str(out_dir))
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert f"{image}: no text" in err and "--text_mode none" in err
    assert not out_dir.exists()


def test_semi_supervised_training_stores_pseudo_labels(semi):
    root, out = semi
    assert "EPI: initial pseudo labels of 6 unlabeled images predicted (epoch 2)" in out  # 8 training, 1/4 labeled
    ckpt = torch.load(next((root / "models").glob("checkpoint*=2.pt")), weights_only=False)
    epi = ckpt["epi_store"]
    assert len(epi["uids"]) == 6 and epi["labels"].shape[1:] == (1, 64, 64)
    assert int(epi["updates"].sum()) == 2 * 2  # 2 iterations x batch 2 of unlabeled images
    assert (root / "models" / "model.pt").is_file()


def test_semi_supervised_resume_continues_from_stored_pseudo_labels(semi):
    root, _ = semi
    before = torch.load(next((root / "models").glob("checkpoint*=2.pt")), weights_only=False)["epi_store"]
    out = check_run(run_bundle(SEMI, "--bundle_root", str(root), "--max_epochs", "3", "--labeled_epochs", "1", *SHORT,
                               *SMALL_DATA))
    assert "resuming from" in out and "Epoch[3]" in out
    assert "EPI: initial pseudo labels" not in out  # restored from the checkpoint, not predicted again
    after = torch.load(root / "models" / "checkpoint_checkpoint_epoch=3.pt", weights_only=False)["epi_store"]
    assert after["uids"] == before["uids"]
    assert int(after["updates"].sum()) == int(before["updates"].sum()) + 2 * 2


def test_semi_supervised_model_evaluates_and_infers(semi):
    root, _ = semi
    check_run(run_bundle([CFG / "train.json", CFG / "evaluate.json", CFG / "quick.json"], "--bundle_root", str(root),
                         *SMALL_DATA))
    assert len(json.loads((root / "eval" / "metrics.json").read_text())["cases"]) == 3
    check_run(run_bundle([CFG / "inference.json", CFG / "quick.json"], "--bundle_root", str(root), *SMALL_DATA))
    assert len(list((root / "eval" / "predictions").glob("*_seg.nii.gz"))) == 3


def test_multi_gpu_config_runs_two_cpu_processes(tmp_path):
    proc = run_torchrun([CFG / "train.json", CFG / "multi_gpu_train.json", CFG / "quick.json"],
                        "--bundle_root", str(tmp_path), "--max_epochs", "1", *SHORT, *SMALL_DATA, port=29547)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend gloo, rank 1 of 2" in out and "backend gloo, rank 0 of 2" in out
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
