"""ACDC (2D cine MRI) and LA (3D left atrium) data for the BCP bundle: converters of the published layouts and
synthetic look-alikes, all written as the project's datalist (``training`` = labeled, ``unlabeled``, ``validation``,
``test``) of NIfTI volumes.

Published layouts (spec of the BCP bundle):

- ACDC, SSL4MIS preprocessing: ``data/patientXXX_frameYY.h5`` volumes (keys ``image`` D x H x W float in [0, 1],
  ``label`` D x H x W 0-3) with ``train.list``/``val.list``/``test.list`` of volume names and ``train_slices.list``
  (``patientXXX_frameYY_slice_Z``). The labeled patients are the first ``num_labeled`` patients in the order of
  ``train_slices.list`` (3 patients = its first 68 lines, 7 = 136), so the split is the paper's.
  :func:`convert_acdc_h5` writes every volume as NIfTI ``[H, W, D]`` (the 2D pipeline samples slices from it).
- LA, UA-MT preprocessing: ``<root>/<case>/mri_norm2.h5`` (``image``, ``label`` 0/1, H x W x D) with ``train.list``
  and ``test.list``; labeled = the first ``num_labeled`` of ``train.list`` (4 or 8). The official code selects models
  on the test set; :func:`convert_la_h5` carves a ``validation`` split out of the *unlabeled* training cases instead.

Datalist items carry a ``patient`` key; :func:`split_first_patients` re-draws the labeled/unlabeled split by patient
order (so one generated dataset serves every labeled fraction). :func:`slice_items` turns the volumes of a split into
one item per 2D slice, so that the 2D training streams draw independent slices (the official ACDC code samples its
batches from the slice list ``train_slices.list``) while the split stays by patient.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datalist import DATALIST_NAME, load_items
from .synthetic.cardiac import ACDC_CLASSES, CardiacMRIPhantom, LeftAtriumPhantom
from .synthetic.io import build_dataset_atomically, write_datalist, write_nifti

__all__ = [
    "ACDC_CLASSES",
    "LA_CLASSES",
    "generate_acdc_synthetic",
    "generate_la_synthetic",
    "convert_acdc_h5",
    "convert_la_h5",
    "split_first_patients",
    "labeled_items",
    "unlabeled_items",
    "slice_items",
]

logger = logging.getLogger(__name__)

LA_CLASSES = ("background", "left_atrium")


def _read_list(path: Path) -> list[str]:
    return [line.strip().replace(".h5", "") for line in path.read_text().splitlines() if line.strip()]


def _patient_of(name: str) -> str:
    m = re.match(r"(patient\d+)", name)
    return m.group(1) if m else name


def _write_case(tmp: Path, split: str, name: str, image: np.ndarray, label: np.ndarray | None, spacing, patient: str):
    item = {"image": write_nifti(image, tmp / split / f"{name}_image.nii.gz", spacing, np.float32),
            "patient": patient}
    if label is not None:
        item["label"] = write_nifti(label, tmp / split / f"{name}_label.nii.gz", spacing, np.uint8)
    for key in ("image", "label"):
        if key in item:
            item[key] = os.path.relpath(item[key], tmp)
    return item


def _generate(dataset_dir, phantom, prefix: str, num_labeled: int, num_unlabeled: int, num_validation: int,
              num_test: int, seed: int) -> str:
    splits = [("training", num_labeled), ("unlabeled", num_unlabeled), ("validation", num_validation),
              ("test", num_test)]
    datalist: dict[str, list] = {}
    index = 0
    with build_dataset_atomically(dataset_dir) as tmp:
        for split, count in splits:
            datalist[split] = []
            for _ in range(count):
                patient = f"{prefix}{index:03d}"
                image, label = phantom.generate([seed, index])
                folder = "train" if split in ("training", "unlabeled") else split
                # unlabeled cases keep their label file for the fully supervised reference; training never reads it
                datalist[split].append(_write_case(tmp, folder, patient, image, label, phantom.spacing, patient))
                index += 1
        datalist["description"] = (
            f"synthetic {prefix} data (seed {seed}); 'training' is the labeled subset, 'unlabeled' the rest of the "
            "training patients (their label files exist only for the fully supervised reference)"
        )
        write_datalist(tmp / DATALIST_NAME, datalist)
    return str(Path(dataset_dir) / DATALIST_NAME)


def generate_acdc_synthetic(
    dataset_dir: str | os.PathLike,
    num_labeled: int = 2,
    num_unlabeled: int = 30,
    num_validation: int = 4,
    num_test: int = 8,
    shape: Sequence[int] = (128, 128, 8),
    seed: int = 0,
) -> str:
    """Synthetic short-axis cine-MRI stacks (:class:`~.synthetic.cardiac.CardiacMRIPhantom`), one per patient, split
    by patient into labeled/unlabeled/validation/test. Returns the datalist path."""
    return _generate(dataset_dir, CardiacMRIPhantom(shape), "patient", num_labeled, num_unlabeled, num_validation,
                     num_test, seed)


def generate_la_synthetic(
    dataset_dir: str | os.PathLike,
    num_labeled: int = 2,
    num_unlabeled: int = 14,
    num_validation: int = 2,
    num_test: int = 4,
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
) -> str:
    """Synthetic left-atrium MRI volumes (:class:`~.synthetic.cardiac.LeftAtriumPhantom`), split by case."""
    return _generate(dataset_dir, LeftAtriumPhantom(shape), "case", num_labeled, num_unlabeled, num_validation,
                     num_test, seed)


def convert_acdc_h5(
    root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    num_labeled: int = 7,
    list_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> str:
    """Convert the SSL4MIS/BCP ACDC h5 layout to NIfTI volumes and the datalist.

    Args:
        root: folder holding ``data/patientXXX_frameYY.h5`` (or the h5 files directly) and the lists.
        dataset_dir: output folder (created atomically).
        num_labeled: labeled patients (3 = 5 %, 7 = 10 %), the first ones in ``train_slices.list`` order.
        list_dir: folder of ``train.list``/``val.list``/``test.list``/``train_slices.list`` (default ``root``).
        spacing: voxel size written into the NIfTI files (the h5 files hold none; metrics in voxels).
    """
    import h5py

    root = Path(root)
    lists = Path(list_dir) if list_dir else root
    data = root / "data" if (root / "data").is_dir() else root
    train, val, test = (_read_list(lists / f"{n}.list") for n in ("train", "val", "test"))
    order: list[str] = []
    slices_list = lists / "train_slices.list"
    for name in (_read_list(slices_list) if slices_list.is_file() else train):
        p = _patient_of(name)
        if p not in order:
            order.append(p)
    labeled = set(order[:num_labeled])
    datalist: dict[str, list] = {"training": [], "unlabeled": [], "validation": [], "test": []}
    with build_dataset_atomically(dataset_dir) as tmp:
        for names, split in ((train, None), (val, "validation"), (test, "test")):
            for name in names:
                with h5py.File(data / f"{name}.h5", "r") as f:
                    image = np.asarray(f["image"], np.float32).transpose(1, 2, 0)
                    label = np.asarray(f["label"], np.uint8).transpose(1, 2, 0)
                patient = _patient_of(name)
                key = split or ("training" if patient in labeled else "unlabeled")
                datalist[key].append(_write_case(tmp, "train" if split is None else split, name, image, label,
                                                 spacing, patient))
        rank = {p: i for i, p in enumerate(order)}
        for key in ("training", "unlabeled"):
            datalist[key].sort(key=lambda it: (rank.get(it["patient"], len(rank)), it["image"]))
        write_datalist(tmp / DATALIST_NAME, datalist)
    return str(Path(dataset_dir) / DATALIST_NAME)


def convert_la_h5(
    root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    num_labeled: int = 8,
    num_validation: int = 8,
    list_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] = (0.625, 0.625, 0.625),
) -> str:
    """Convert the UA-MT/BCP LA layout (``<root>/<case>/mri_norm2.h5``, ``train.list``, ``test.list``).

    Labeled = the first ``num_labeled`` cases of ``train.list``; ``validation`` = the last ``num_validation``
    cases of ``train.list`` (taken from the unlabeled pool, so model selection never sees the test set)."""
    import h5py

    root = Path(root)
    lists = Path(list_dir) if list_dir else root
    train, test = _read_list(lists / "train.list"), _read_list(lists / "test.list")
    if num_labeled + num_validation > len(train):
        raise ValueError(f"{num_labeled} labeled + {num_validation} validation cases > {len(train)} in train.list")
    val = train[len(train) - num_validation:] if num_validation else []
    datalist: dict[str, list] = {"training": [], "unlabeled": [], "validation": [], "test": []}
    with build_dataset_atomically(dataset_dir) as tmp:
        for i, name in enumerate(train + test):
            with h5py.File(root / name / "mri_norm2.h5", "r") as f:
                image, label = np.asarray(f["image"], np.float32), np.asarray(f["label"], np.uint8)
            if i >= len(train):
                key = "test"
            elif name in val:
                key = "validation"
            else:
                key = "training" if i < num_labeled else "unlabeled"
            datalist[key].append(_write_case(tmp, "train" if key in ("training", "unlabeled") else key, name, image,
                                             label, spacing, name))
        write_datalist(tmp / DATALIST_NAME, datalist)
    return str(Path(dataset_dir) / DATALIST_NAME)


def split_first_patients(
    datalist: str | os.PathLike, num_labeled: int | None = None
) -> tuple[list[dict], list[dict]]:
    """``(labeled, unlabeled)`` items of a datalist. ``num_labeled=None`` keeps the datalist's own split; a number
    takes the first ``num_labeled`` *patients* of ``training + unlabeled`` (list order) as labeled, the rest as
    unlabeled (their labels are dropped)."""
    labeled = load_items(datalist, "training")
    try:
        unlabeled = load_items(datalist, "unlabeled")
    except KeyError:
        unlabeled = []
    if num_labeled is None or num_labeled < 0:
        return labeled, [{k: v for k, v in it.items() if k != "label"} for it in unlabeled]
    pool = labeled + unlabeled
    # not monai.data.partition_dataset: it splits items by ratio, while this splits by the first N patients
    patients: list[str] = []
    for it in pool:
        p = it.get("patient", it["image"])
        if p not in patients:
            patients.append(p)
    chosen = set(patients[:num_labeled])
    lab = [it for it in pool if it.get("patient", it["image"]) in chosen]
    if any("label" not in it for it in lab):
        raise ValueError(f"{datalist}: some of the first {num_labeled} patients have no label file")
    unl = [{k: v for k, v in it.items() if k != "label"} for it in pool if it.get("patient", it["image"]) not in chosen]
    return lab, unl


def labeled_items(datalist: str | os.PathLike, num_labeled: int | None = None, repeats: int = 1) -> list[dict]:
    """The labeled items of :func:`split_first_patients`, repeated ``repeats`` times (so a short epoch still draws
    batches when there are very few labeled volumes)."""
    return split_first_patients(datalist, num_labeled)[0] * max(int(repeats), 1)


def unlabeled_items(datalist: str | os.PathLike, num_labeled: int | None = None, repeats: int = 1) -> list[dict]:
    """The unlabeled items of :func:`split_first_patients` (labels dropped), repeated ``repeats`` times."""
    return split_first_patients(datalist, num_labeled)[1] * max(int(repeats), 1)


def _num_slices(path: str, axis: int) -> int:
    """Number of slices of the image file ``path`` along spatial ``axis`` (the NIfTI header only, when possible)."""
    try:
        import nibabel as nib

        shape = nib.load(path).shape
    except Exception:  # noqa: BLE001 - another format: read it with MONAI
        from monai.transforms import LoadImage

        shape = tuple(LoadImage(image_only=True, ensure_channel_first=False)(path).shape)
    if len(shape) < 3:
        raise ValueError(f"{path}: a volume is needed to take slices, got shape {shape}")
    return int(shape[:3][axis])


def slice_items(items: list[dict], axis: int = -1, slice_key: str = "slice") -> list[dict]:
    """One item per slice of each volume of ``items``: a copy of the volume's item with ``slice_key`` set to the slice
    index along spatial ``axis`` (``-1``: the last of the three spatial axes, the short axis of ``[H, W, D]``
    stacks). :class:`custom_components.transforms.bcp.SelectSliced` then keeps that slice after loading.

    A loader shuffling these items draws every batch from the slices of all the volumes, each slice independently
    (the official ACDC batches: 12 slices of the slice list), instead of several slices of a few volumes.
    """
    out = []
    for item in items:
        for z in range(_num_slices(str(item["image"]), axis)):
            out.append({**item, slice_key: z})
    return out
