"""A packaged bundle runs on its own: unzip into an empty folder, infer there, without this repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from package_bundles import package_bundle, sha256_file  # noqa: E402

pytestmark = pytest.mark.slow

BUNDLE = "levit_unet_synapse_segmentation"


def _isolated_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    return env


def test_unpacked_zip_runs_inference_without_repository(tmp_path):
    info = package_bundle(REPO / "bundles" / BUNDLE, tmp_path / "dist")
    zip_path = tmp_path / "dist" / info["file"]
    assert sha256_file(zip_path) == info["sha256"]
    target = tmp_path / "workstation"
    target.mkdir()
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(target)
    root = target / BUNDLE
    assert (root / "custom_components" / "__init__.py").is_file() and not (root / "models" / "model.pt").exists()

    # weights travel separately (large_files.yml); random ones of the quick network suffice to run inference
    from custom_components.networks import LeViTUNet

    quick = json.loads((root / "configs" / "quick.json").read_text())
    net = LeViTUNet("128s", 1, 9, img_size=quick["img_size"], decoder_channels=quick["decoder_channels"])
    (root / "models").mkdir(exist_ok=True)
    torch.save(net.state_dict(), root / "models" / "model.pt")

    env = _isolated_env()
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, custom_components; print(custom_components.__file__); print(sys.path)"],
        cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    module_file, path_line = probe.stdout.splitlines()[-2:]
    assert Path(module_file).resolve().is_relative_to(root.resolve()), module_file
    assert str(REPO) not in path_line

    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['configs/inference.json','configs/quick.json']",
         "--synthetic_data#num_training", "1", "--synthetic_data#num_validation", "0", "--synthetic_data#num_test", "2"],
        cwd=root, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    preds = sorted((root / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(preds) == 2, proc.stdout[-2000:]
