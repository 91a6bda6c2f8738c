"""BTCV multi-organ abdominal CT (13 organs): reader of the published ``dataset_0.json`` layout, synthetic data.

Both write the same datalist (``dataset.json``, paths relative to its folder), so one bundle config serves real and
synthetic data::

    dataset_dir/
      imagesTr/img0001.nii.gz   labelsTr/label0001.nii.gz   # labeled cases: training, validation, test
      imagesTs/img0061.nii.gz                               # unlabeled CT (pre-training pool)
      dataset.json   # "training", "validation", "test": [{"image", "label"}], "unlabeled": [{"image"}], "labels"

An ``image`` entry may also be a DICOM series folder (read by MONAI's ``LoadImage`` with ITK, which keeps the patient
geometry). Labels are the BTCV indices of :data:`BTCV_CLASSES` (0 background, 1 spleen, ..., 13 left adrenal gland).

- :func:`generate_btcv_synthetic`: abdomen CT phantoms in HU (:class:`~.synthetic.phantoms.AbdomenCTPhantom`, the 13
  organs at anatomical positions with per-case variation, blur, bias and noise), as int16 NIfTI in ``LPS`` order;
  a small labeled set plus an unlabeled pool.
- :func:`convert_btcv`: reads BTCV's ``dataset_0.json`` (24 training / 6 validation, ``imagesTs`` unlabeled), checks
  every listed file, and writes ``dataset.json`` next to it (``test`` = the validation cases unless ``num_test`` moves
  some training cases there; ``unlabeled`` = the test images plus any ``extra_unlabeled`` folder of NIfTI files /
  DICOM series).

Command line::

    python -m custom_components.data convert_btcv --src_dir /data/BTCV
    python -m custom_components.data synthetic_btcv --dataset_dir /data/btcv_synthetic
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datalist import inference_items
from .synthetic.io import build_dataset_atomically, write_datalist, write_nifti
from .synthetic.phantoms import BTCV_CLASSES, AbdomenCTPhantom

__all__ = ["BTCV_CLASSES", "generate_btcv_synthetic", "convert_btcv"]

logger = logging.getLogger(__name__)


def _datalist(splits: dict, description: str, **extra) -> dict:
    return {
        "name": "BTCV multi-organ abdominal CT",
        "description": description,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(BTCV_CLASSES)},
        **{f"num{k.capitalize()}": len(v) for k, v in splits.items()},
        **extra,
        **splits,
    }


def generate_btcv_synthetic(
    dataset_dir: str | os.PathLike,
    num_training: int = 6,
    num_validation: int = 2,
    num_test: int = 2,
    num_unlabeled: int = 12,
    shape: Sequence[int] = (96, 96, 48),
    spacing: Sequence[float] = (4.0, 4.0, 5.0),
    seed: int = 0,
) -> str:
    """Write a synthetic BTCV-like dataset (labeled cases and an unlabeled pre-training pool) and its datalist.

    Case ``i`` (labeled ``img0001..``: training, validation, test; then unlabeled ``img1001..`` in ``imagesTs``) is
    ``AbdomenCTPhantom(shape, spacing).generate([seed, i])``, written as int16 HU / uint8 labels in ``LPS`` order
    (the phantom's default grid of 384 x 384 x 240 mm). Written atomically; nothing is written when
    ``dataset.json`` already exists.

    Returns:
        path of ``dataset.json``.
    """
    final = Path(dataset_dir)
    datalist_path = final / "dataset.json"
    if datalist_path.is_file():
        return str(datalist_path)
    if final.is_dir() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists, is not empty and holds no dataset.json; choose an empty dataset_dir")
    counts = {"training": num_training, "validation": num_validation, "test": num_test, "unlabeled": num_unlabeled}
    if any(n < 0 for n in counts.values()) or num_training < 1:
        raise ValueError(f"need at least one training case and no negative counts, got {counts}")
    phantom = AbdomenCTPhantom(shape=shape, spacing=spacing)
    splits: dict[str, list] = {key: [] for key in counts}
    total, index = sum(counts.values()), 0
    with build_dataset_atomically(final) as tmp:
        for key, count in counts.items():
            for n in range(count):
                image, label = phantom.generate([seed, index])
                if key == "unlabeled":
                    item = {"image": f"imagesTs/img{1001 + n:04d}.nii.gz"}
                else:
                    item = {"image": f"imagesTr/img{index + 1:04d}.nii.gz",
                            "label": f"labelsTr/label{index + 1:04d}.nii.gz"}
                    write_nifti(label, tmp / item["label"], phantom.spacing, dtype=np.uint8, axcodes=phantom.AXCODES)
                write_nifti(image, tmp / item["image"], phantom.spacing, dtype=np.int16, axcodes=phantom.AXCODES)
                splits[key].append(item)
                index += 1
                logger.info("synthetic BTCV %s case %d/%d: %s", key, index, total, item["image"])
        description = (
            f"Synthetic BTCV-like abdominal CT (AbdomenCTPhantom, seed {seed}, grid {tuple(phantom.shape)}, spacing "
            f"{phantom.spacing} mm, orientation {phantom.AXCODES}, HU as int16); 13 organ labels."
        )
        write_datalist(tmp / "dataset.json", _datalist(splits, description, seed=seed, synthetic=True))
    return str(datalist_path)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def convert_btcv(
    src_dir: str | os.PathLike,
    datalist_name: str = "dataset_0.json",
    num_test: int = 0,
    extra_unlabeled: str | os.PathLike | None = None,
    output_name: str = "dataset.json",
) -> str:
    """Read BTCV's ``dataset_0.json`` and write this project's datalist next to it.

    Args:
        src_dir: the BTCV root (holding ``dataset_0.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``).
        datalist_name: the published datalist.
        num_test: move the last ``num_test`` training cases to ``test``; with 0, ``test`` repeats the ``validation``
            cases (the official protocol reports Dice on img0035-img0040).
        extra_unlabeled: a folder of further unlabeled CT (NIfTI files and/or DICOM series subfolders) for
            pre-training, added to ``unlabeled``.
        output_name: file written in ``src_dir``.

    Returns:
        path of the written datalist.

    Raises:
        FileNotFoundError: the datalist or any listed image/label is missing (all missing files are named).
        ValueError: the datalist has no ``training`` list, or ``num_test`` leaves no training case.
    """
    root = Path(src_dir)
    src = root / datalist_name
    if not src.is_file():
        raise FileNotFoundError(f"BTCV datalist not found: {src}")
    published = json.loads(src.read_text())
    if not isinstance(published.get("training"), list) or not published["training"]:
        raise ValueError(f"{src}: no 'training' list")

    def item(entry) -> dict:
        return {"image": entry} if isinstance(entry, str) else {k: entry[k] for k in ("image", "label") if k in entry}

    training = [item(e) for e in published["training"]]
    validation = [item(e) for e in published.get("validation", [])]
    unlabeled = [item(e) for e in published.get("test", [])]
    if not 0 <= num_test < len(training):
        raise ValueError(f"num_test={num_test} must be in [0, {len(training) - 1}]")
    test = training[len(training) - num_test:] if num_test else list(validation)
    training = training[: len(training) - num_test]
    listed = [root / v for it in training + validation + unlabeled for v in it.values()]
    missing = [str(p) for p in listed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{src}: {len(missing)} listed file(s) missing: " + ", ".join(missing[:10]))
    if extra_unlabeled:
        unlabeled += [{"image": _rel(Path(it["image"]), root)} for it in inference_items(extra_unlabeled)]
    unlabeled = [{"image": it["image"]} for it in unlabeled]
    splits = {"training": training, "validation": validation, "test": test, "unlabeled": unlabeled}
    out = root / output_name
    write_datalist(out, _datalist(splits, f"BTCV converted from {src}", source=str(src.resolve())))
    logger.info("BTCV datalist %s: %s", out, {k: len(v) for k, v in splits.items()})
    return str(out)
