"""LViT on real data: MoNuSeg (H&E nuclei, RGB 1000×1000, one sentence per image) through the QaTa converter and the
``configs/monuseg.json`` overlay, as a user runs it.

- The converter on a tiny synthetic layout with only ``Train_Folder`` + ``Val_Folder`` (MoNuSeg as shipped), read-only,
  writing its datalist to a separate folder; the fixed split of the evidence (validation taken from the training
  images, listed in the datalist; ``Val_Folder`` as ``test``); its errors.
- The real data in ``<repo>/../shared/data/monuseg`` (skipped when absent): convert, a short training (shrunk network
  and iterations) that validates on the 4 held-out training images, then inference on the 6 ``Val_Folder`` images with
  their sentences: masks of the input size, 0/255 like ``labelcol/``. The data are only read: the datalist, the text
  cache and every output go to temporary folders. Accuracy is the benchmark's business, not asserted here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, check_run, run_bundle

BUNDLE = REPO / "bundles" / "lvit_qata_covid19_segmentation"
CFG = BUNDLE / "configs"
MONUSEG = REPO.parent / "shared" / "data" / "monuseg"
SMALL = ["--img_size", "64", "--base_channels", "16"]  # the network of quick.json: CPU test sizes


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _set_read_only(root: Path, read_only: bool = True) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555 if read_only else 0o755)
        else:
            p.chmod(0o444 if read_only else 0o644)


def _write_xlsx(path: Path, rows: list[list[str]]) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    wb = openpyxl.Workbook()
    for r in rows:
        wb.active.append(r)
    wb.save(path)


@pytest.fixture
def monuseg_like(tmp_path) -> Path:
    """MoNuSeg's layout in miniature: Train_Folder (6) + Val_Folder (2), RGB images, 0/255 masks named as the
    images, ``<Split>_text.xlsx`` keyed by the mask name; no Test_Folder. Read-only."""
    from PIL import Image

    root = tmp_path / "monuseg"
    rng = np.random.default_rng(0)
    for folder, n in (("Train", 6), ("Val", 2)):
        rows = [["Image", "Description"]]
        for sub in ("img", "labelcol"):
            (root / f"{folder}_Folder" / sub).mkdir(parents=True)
        for i in range(n):
            name = f"TCGA-{folder}-{i:02d}.png"
            image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / f"{folder}_Folder" / "img" / name)
            mask = (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255
            Image.fromarray(mask).save(root / f"{folder}_Folder" / "labelcol" / name)
            rows.append([name, f"The nuclei density in {folder.lower()} image {i} is high."])
        _write_xlsx(root / f"{folder}_Folder" / f"{folder}_text.xlsx", rows)
    _set_read_only(root)
    yield root
    _set_read_only(root, False)


def test_convert_train_and_val_folders_into_another_folder(monuseg_like, tmp_path):
    from custom_components.data.qata import convert_qata

    before = _snapshot(monuseg_like)
    # default: Val_Folder is the validation split; no test folder, no test items
    data = json.loads(Path(convert_qata(monuseg_like, tmp_path / "plain")).read_text())
    assert [len(data[k]) for k in ("training", "validation", "test")] == [6, 2, 0] and "split_info" not in data
    # the evidence split: 4 of the training images for validation (seeded), Val_Folder as test
    path = convert_qata(monuseg_like, tmp_path / "out", val_images=2, val_folder_split="test", seed=3)
    assert Path(path) == tmp_path / "out" / "dataset.json"
    data = json.loads(Path(path).read_text())
    assert [len(data[k]) for k in ("training", "validation", "test")] == [4, 2, 2]
    info = data["split_info"]
    assert info["test"] == {"from": "Val_Folder"} and info["validation"]["seed"] == 3
    val_names = info["validation"]["images"]
    assert sorted(Path(it["image"]).name for it in data["validation"]) == sorted(val_names)
    assert not {Path(it["image"]).name for it in data["training"]} & set(val_names)
    for it in data["training"] + data["validation"] + data["test"]:  # absolute paths back into the source
        assert Path(it["image"]).is_absolute() and Path(it["image"]).is_file() and Path(it["label"]).is_file()
        assert Path(it["image"]).name == Path(it["label"]).name and it["text"].startswith("The nuclei density")
    assert {Path(it["image"]).parent.parent.name for it in data["test"]} == {"Val_Folder"}
    # deterministic; an explicit list gives the same split
    again = convert_qata(monuseg_like, tmp_path / "again", val_images=2, val_folder_split="test", seed=3)
    assert json.loads(Path(again).read_text()) == data
    listed = convert_qata(monuseg_like, tmp_path / "listed", val_images=",".join(val_names), val_folder_split="test")
    listed = json.loads(Path(listed).read_text())
    assert listed["validation"] == data["validation"] and listed["split_info"]["validation"]["images"] == val_names
    assert _snapshot(monuseg_like) == before  # nothing written into the source


def test_convert_errors(monuseg_like, tmp_path):
    from custom_components.data.qata import convert_qata
    from custom_components.data.validation import InputDataError

    with pytest.raises(InputDataError, match="set val_folder_split='test'"):
        convert_qata(monuseg_like, tmp_path / "o", val_images=2)
    with pytest.raises(InputDataError, match="not in Train_Folder/img: nope.png"):
        convert_qata(monuseg_like, tmp_path / "o", val_images=["TCGA-Train-00.png", "nope.png"],
                     val_folder_split="test")
    with pytest.raises(InputDataError, match="give 1..5"):
        convert_qata(monuseg_like, tmp_path / "o", val_images=6, val_folder_split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="none of Train_Folder, Val_Folder, Test_Folder"):
        convert_qata(tmp_path / "empty", tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_overlay_without_converted_data_says_how_to_convert(tmp_path):
    proc = run_bundle([CFG / "train.json", CFG / "monuseg.json"], "--bundle_root", str(tmp_path), run_id="training")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no dataset.json" in out and "convert_qata" in out
    assert not (tmp_path / "data" / "monuseg").exists()  # no synthetic stand-in generated


# ------------------------------------------------------------------------------------------------
# the real data
# ------------------------------------------------------------------------------------------------
needs_monuseg = pytest.mark.skipif(
    not (MONUSEG / "Train_Folder" / "img").is_dir(),
    reason=f"MoNuSeg not found at {MONUSEG} (the shared benchmark data, <repo>/../shared/data/monuseg; "
           f"never in the repository)",
)


@pytest.fixture(scope="module")
def monuseg_run(tmp_path_factory):
    """The model card's commands on the real data, shrunk: convert (20/4/6), train 2 epochs × 2 iterations of the
    quick-size network, infer on the test split. Returns ``(datalist, bundle_root, training output)``."""
    from custom_components.data.qata import convert_qata

    before = _snapshot(MONUSEG)
    work = tmp_path_factory.mktemp("monuseg")
    datalist = Path(convert_qata(MONUSEG, work / "dataset", val_images=4, val_folder_split="test"))
    root = work / "bundle"
    common = ["--dataset_dir", str(datalist.parent), "--bundle_root", str(root), "--text_cache_dir", str(work / "text")]
    out = check_run(run_bundle([CFG / "train.json", CFG / "monuseg.json"], *common, *SMALL, "--max_epochs", "2",
                               "--epoch_length", "2", run_id="training"))
    check_run(run_bundle([CFG / "inference.json", CFG / "monuseg.json"], *common, *SMALL))
    yield datalist, root, out
    assert _snapshot(MONUSEG) == before, "the shared data were modified"


@needs_monuseg
@pytest.mark.slow
def test_monuseg_datalist(monuseg_run):
    data = json.loads(monuseg_run[0].read_text())
    assert [len(data[k]) for k in ("training", "validation", "test")] == [20, 4, 6]
    assert len(data["split_info"]["validation"]["images"]) == 4
    assert all(it["text"].strip() for k in ("training", "validation", "test") for it in data[k])
    assert all(Path(it["image"]).is_relative_to(MONUSEG.resolve()) for it in data["test"])


@needs_monuseg
@pytest.mark.slow
def test_monuseg_training_loss_finite_and_checkpoint(monuseg_run):
    import torch

    from custom_components.networks import LViT

    _, root, out = monuseg_run
    losses = [float(v) for v in re.findall(r"train_loss: (\S+)", out)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    assert "val_mean_dice" in out  # validated on the 4 held-out training images
    net = LViT(in_channels=3, img_size=64, base_channels=16, text_dim=384)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))  # strict
    assert any((root.parent / "text").rglob("*.pt"))  # sentences embedded into the given cache, not the repo's


@needs_monuseg
@pytest.mark.slow
def test_monuseg_inference_masks_like_labelcol(monuseg_run):
    from PIL import Image

    _, root, _ = monuseg_run
    preds = sorted((root / "eval" / "predictions").glob("*_seg.png"))
    assert [p.name[: -len("_seg.png")] for p in preds] == sorted(
        p.stem for p in (MONUSEG / "Val_Folder" / "img").glob("*.png"))
    for p in preds:
        arr = np.asarray(Image.open(p))
        assert arr.shape == (1000, 1000) and set(np.unique(arr).tolist()) <= {0, 255}


def test_benchmark_unet_baseline_is_monai_unet_of_the_papers_size_and_reads_no_text(tmp_path):
    """The MoNuSeg benchmark's U-Net arm: the bundle's configs with the tool's overlay build a plain MONAI UNet of
    14.83 M parameters (paper: 14.8 M) whose batches carry no text."""
    import sys

    from monai.bundle import ConfigParser
    from monai.engines import PrepareBatchDefault
    from monai.networks.nets import UNet

    sys.path.insert(0, str(REPO / "tools"))
    import benchmark_lvit_monuseg as bench

    configs = bench._configs("unet", tmp_path)
    assert configs[-1].parent == tmp_path and [c.name for c in configs[:2]] == ["train.json", "monuseg.json"]
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update({"bundle_root": str(tmp_path), "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, UNet) and isinstance(parser.get_parsed_content("prepare_batch"), PrepareBatchDefault)
    assert sum(p.numel() for p in net.parameters()) == 14_828_764
    assert net(torch.zeros(1, 3, 224, 224)).shape == (1, 1, 224, 224)
    assert bench._configs("text", tmp_path)[-1].name == "monuseg.json"
