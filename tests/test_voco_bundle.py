"""The VoCo bundle end to end through ``python -m monai.bundle run``: VoCo pre-training -> fine-tuning initialised from
its backbone -> evaluation -> inference (geometry kept), bad input, and two-process ``torchrun`` fine-tuning on CPU.

Tiny synthetic data and a few iterations: these check that the workflows run and write well-formed outputs; the
evidence of what pre-training does is measured by tools/benchmark_voco.py.
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

CFG = REPO / "bundles" / "voco_btcv_segmentation" / "configs"
SMALL = ["--synthetic_data#num_training", "2", "--synthetic_data#num_validation", "1", "--synthetic_data#num_test", "1",
         "--synthetic_data#num_unlabeled", "2", "--synthetic_data#shape", "[64,64,32]",
         "--synthetic_data#spacing", "[6.0,6.0,7.5]", "--spacing", "[6.0,6.0,7.5]"]
FINETUNE = ["--max_epochs", "1", "--epoch_length", "2", "--num_samples", "1"]
BACKBONE = "$@ckpt_dir + '/pretrain/backbone.pt'"


def _cfg(*names: str) -> list[Path]:
    return [CFG / n for n in names]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("voco")
    check_run(run_bundle(_cfg("pretrain.json", "quick.json"), "--bundle_root", str(root), *SMALL,
                         "--pretrain_total_iters", "1", run_id="training"))
    out = check_run(run_bundle(_cfg("train.json", "quick.json"), "--bundle_root", str(root), *SMALL, *FINETUNE,
                               "--pretrained_ckpt", BACKBONE, run_id="training"))
    return root, out


def test_pretrain_writes_voco_head_and_a_swinunetr_backbone(run):
    from monai.networks.nets import SwinUNETR

    from custom_components.networks.voco import BACKBONE_PREFIXES, VoCoHead

    root, _ = run
    quick = json.loads((CFG / "quick.json").read_text())
    head = VoCoHead(feature_size=quick["feature_size"], hidden_dim=quick["head_hidden_dim"],
                    out_dim=quick["head_out_dim"])
    head.load_state_dict(torch.load(root / "models" / "pretrain" / "model.pt", weights_only=True))
    backbone = torch.load(root / "models" / "pretrain" / "backbone.pt", weights_only=True)
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=quick["feature_size"], use_v2=True)
    result = net.load_state_dict(backbone, strict=False)
    assert result.unexpected_keys == []
    assert set(backbone) == {k for k in net.state_dict() if k.startswith(BACKBONE_PREFIXES)}
    ckpt = torch.load(next((root / "models" / "pretrain").glob("checkpoint*.pt")), weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "ema", "trainer"} <= set(ckpt)
    assert ckpt["trainer"]["iteration"] == 1


def test_finetune_starts_from_the_pretrained_backbone(run):
    from monai.networks.nets import SwinUNETR

    root, out = run
    assert "VoCo weights from" in out and "145 matched" in out and "0 unexpected" in out
    quick = json.loads((CFG / "quick.json").read_text())
    net = SwinUNETR(in_channels=1, out_channels=14, feature_size=quick["feature_size"], use_v2=True)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))  # strict, plain state dict


def test_evaluate_and_infer_keep_the_input_geometry(run, tmp_path):
    root, _ = run
    check_run(run_bundle(_cfg("train.json", "evaluate.json", "quick.json"), "--bundle_root", str(root), *SMALL))
    report = json.loads((root / "eval" / "metrics.json").read_text())
    assert len(report["cases"]) == 1 and "liver" in report["summary"]["classes"]
    # inference on a single NIfTI file, written to a chosen output_dir
    datalist = json.loads((root / "data" / "btcv" / "dataset.json").read_text())
    image = root / "data" / "btcv" / datalist["test"][0]["image"]
    out_dir = tmp_path / "pred"
    check_run(run_bundle(_cfg("inference.json", "quick.json"), "--bundle_root", str(root), *SMALL,
                         "--input", str(image), "--output_dir", str(out_dir)))
    preds = sorted(out_dir.glob("*_seg.nii.gz"))
    assert [p.name for p in preds] == [image.name.replace(".nii.gz", "_seg.nii.gz")]
    src, pred = nib.load(image), nib.load(preds[0])
    assert pred.shape == src.shape and pred.get_data_dtype() == np.uint8
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-4)
    assert np.asarray(pred.dataobj).max() <= 13


def test_inference_on_a_dicom_series_keeps_patient_geometry(run, tmp_path):
    dicom = pytest.importorskip("custom_components.dicom")
    root, _ = run
    datalist = json.loads((root / "data" / "btcv" / "dataset.json").read_text())
    image = root / "data" / "btcv" / datalist["test"][0]["image"]
    dicom.write_dicom_series(str(image), tmp_path / "series", modality="CT")
    out_dir = tmp_path / "pred"
    check_run(run_bundle(_cfg("inference.json", "quick.json"), "--bundle_root", str(root), *SMALL,
                         "--input", str(tmp_path / "series"), "--output_dir", str(out_dir)))
    preds = sorted(out_dir.glob("*_seg.nii.gz"))
    assert len(preds) == 1
    src, pred = nib.load(image), nib.load(preds[0])
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine, atol=1e-3)


def test_inference_on_bad_input_stops_before_writing(run, tmp_path):
    root, _ = run
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "scan_corrupt.nii.gz").write_bytes(b"not an image")
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(folder / "scan_2d.nii.gz"))
    out_dir = tmp_path / "predictions"
    proc = run_bundle(_cfg("inference.json", "quick.json"), "--bundle_root", str(root), "--input", str(folder),
                      "--output_dir", str(out_dir))
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert "scan_corrupt.nii.gz: unreadable" in err
    assert "scan_2d.nii.gz: has 2 dimensions [32, 32], expected a 3D image" in err
    assert not out_dir.exists()


def test_pretrain_with_missing_checkpoint_path_fails_clearly(tmp_path):
    proc = run_bundle(_cfg("train.json", "quick.json"), "--bundle_root", str(tmp_path), *SMALL, *FINETUNE,
                      "--pretrained_ckpt", str(tmp_path / "nope.pt"), run_id="training")
    assert proc.returncode != 0
    assert "VoCo checkpoint not found" in proc.stdout + proc.stderr
    assert not (tmp_path / "models" / "model.pt").exists()


def test_multi_gpu_config_runs_two_cpu_processes(tmp_path):
    proc = run_torchrun(_cfg("train.json", "multi_gpu_train.json", "quick.json"), "--bundle_root", str(tmp_path),
                        *SMALL, "--max_epochs", "1", "--epoch_length", "1", "--num_samples", "1",
                        "--synthetic_data#num_validation", "2", port=29541)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "backend gloo, rank 1 of 2" in out and "backend gloo, rank 0 of 2" in out
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
