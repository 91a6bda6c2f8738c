"""Synapse multi-organ CT (TransUNet preprocessing): synthetic generator and converter to a datalist.

Both functions write the same layout, so one bundle config serves real and synthetic data::

    dataset_dir/
      imagesTr/<case>.nii.gz   labelsTr/<case>.nii.gz    # training and validation cases (3D)
      imagesTs/<case>.nii.gz   labelsTs/<case>.nii.gz    # test cases (3D)
      dataset.json             # "training", "validation", "test": [{"image", "label"}], "labels"

Images are CT in HU (float32 for converted data, int16 for synthetic data), labels uint8 with the
Synapse indices of :data:`SYNAPSE_CLASSES`. Paths in ``dataset.json`` are relative to
``dataset_dir``: ``monai.data.load_decathlon_datalist(path, data_list_key="training",
base_dir=dataset_dir)`` resolves them.

Array layout: ``(H, W, D)``, i.e. the published test volumes (``D x H x W``) transposed, with the
training slices stacked along the last axis in slice order; ``volume[:, :, k]`` is the published
2D slice ``k``. Assuming the published arrays have the usual SimpleITK order of a DICOM-derived CT,
H runs anterior to posterior, W from the patient's right to left and D upwards: axis codes ``"PLS"``
(:data:`SYNAPSE_AXCODES`), the orientation written into the NIfTI headers. Synthetic volumes use the
same layout (the phantom's ``LPS`` arrays with the first two axes swapped), so ``volume[:, :, k]``
shown with ``imshow`` is a radiological-view slice in both cases. The published data carry no voxel
spacing; the converter writes ``spacing`` (default 1 mm) in the header.

Command line::

    python -m custom_components.data convert_synapse --src_dir /data/Synapse --dst_dir /data/synapse_nifti
    python -m custom_components.data synthetic_synapse --dataset_dir /data/synapse_synthetic
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .synthetic.io import build_dataset_atomically, write_datalist, write_nifti
from .synthetic.phantoms import BTCV_CLASSES, AbdomenCTPhantom

__all__ = [
    "SYNAPSE_CLASSES",
    "BTCV_TO_SYNAPSE",
    "SYNAPSE_AXCODES",
    "generate_synapse_synthetic",
    "convert_synapse",
]

logger = logging.getLogger(__name__)

SYNAPSE_CLASSES: tuple[str, ...] = (
    "background",
    "aorta",
    "gallbladder",
    "left_kidney",
    "right_kidney",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
)
"""Synapse label names in the TransUNet index order (position = label index)."""

BTCV_TO_SYNAPSE: np.ndarray = np.array(
    [SYNAPSE_CLASSES.index(name) if name in SYNAPSE_CLASSES else 0 for name in BTCV_CLASSES], dtype=np.uint8
)
"""Lookup table: ``BTCV_TO_SYNAPSE[btcv_label]`` is the Synapse label (organs not in Synapse map to 0)."""

SYNAPSE_AXCODES = "PLS"
"""Orientation of the ``(H, W, D)`` arrays written by this module (see the module docstring)."""

HU_MIN, HU_MAX = -125.0, 275.0
"""The HU window of TransUNet's preprocessing: ``image = (clip(hu, -125, 275) + 125) / 400``."""

_TRAIN_LISTS = ("train_slice_synapse.txt", "train.txt")
_TEST_LISTS = ("test_vol_synapse.txt", "test_vol.txt")
_SLICE_NAME = re.compile(r"^(?P<case>case\d+)_slice(?P<index>\d+)$")
_DESCRIPTION_CONVERTED = (
    "Synapse multi-organ abdominal CT (TransUNet preprocessing) converted to NIfTI volumes in HU "
    "(image * 400 - 125); arrays (H, W, D)."
)


def _split_item(case: str, test: bool) -> dict[str, str]:
    suffix = "Ts" if test else "Tr"
    return {"image": f"images{suffix}/{case}.nii.gz", "label": f"labels{suffix}/{case}.nii.gz"}


def _write_case(
    root: Path, item: dict[str, str], image: np.ndarray, label: np.ndarray, spacing: Sequence[float], image_dtype
) -> None:
    write_nifti(image, root / item["image"], spacing, dtype=image_dtype, axcodes=SYNAPSE_AXCODES)
    write_nifti(label, root / item["label"], spacing, dtype=np.uint8, axcodes=SYNAPSE_AXCODES)


def _datalist(training: list, validation: list, test: list, description: str, **extra) -> dict:
    return {
        "name": "Synapse multi-organ CT",
        "description": description,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(SYNAPSE_CLASSES)},
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": len(test),
        **extra,
        "training": training,
        "validation": validation,
        "test": test,
    }


# --------------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------------
def generate_synapse_synthetic(
    dataset_dir: str | os.PathLike,
    num_training: int = 12,
    num_validation: int = 3,
    num_test: int = 4,
    shape: Sequence[int] = (128, 128, 48),
    spacing: Sequence[float] = (3.0, 3.0, 5.0),
    seed: int = 0,
) -> str:
    """Write a synthetic Synapse-like dataset (abdominal CT phantoms, 8 organs) and its datalist.

    Case ``i`` (``case_0000``, ``case_0001``, ...: training, then validation, then test) is
    ``AbdomenCTPhantom(shape, spacing).generate([seed, i])`` with BTCV labels mapped by
    :data:`BTCV_TO_SYNAPSE` (the other organs stay in the image, unlabelled, as in the real data), the
    first two axes swapped to the ``(H, W, D)`` layout of the converter and the image stored as int16
    HU. The folder is built atomically (:func:`~.synthetic.io.build_dataset_atomically`). If
    ``dataset_dir`` already holds a ``dataset.json``, nothing is written.

    Args:
        dataset_dir: output folder (created).
        num_training: training cases (``imagesTr``).
        num_validation: validation cases (also in ``imagesTr``).
        num_test: test cases (``imagesTs``).
        shape: phantom grid ``(X, Y, Z)`` (written as ``(Y, X, Z)``).
        spacing: phantom voxel size (mm).
        seed: dataset seed.

    Returns:
        path of ``dataset.json``.
    """
    final = Path(dataset_dir)
    datalist_path = final / "dataset.json"
    if datalist_path.is_file():
        logger.info("synthetic Synapse dataset already present: %s", datalist_path)
        return str(datalist_path)
    if final.is_dir() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists, is not empty and holds no dataset.json; choose an empty dataset_dir")
    counts = {"training": num_training, "validation": num_validation, "test": num_test}
    if any(n < 0 for n in counts.values()) or num_training < 1:
        raise ValueError(f"need at least one training case and no negative counts, got {counts}")
    phantom = AbdomenCTPhantom(shape=shape, spacing=spacing)
    written_spacing = (phantom.spacing[1], phantom.spacing[0], phantom.spacing[2])
    splits: dict[str, list] = {key: [] for key in counts}
    total = sum(counts.values())
    with build_dataset_atomically(final) as tmp:
        index = 0
        for key, count in counts.items():
            for _ in range(count):
                case = f"case_{index:04d}"
                image, label = phantom.generate([seed, index])
                item = _split_item(case, test=key == "test")
                image, label = image.transpose(1, 0, 2), BTCV_TO_SYNAPSE[label].transpose(1, 0, 2)
                _write_case(tmp, item, image, label, written_spacing, np.int16)
                splits[key].append(item)
                index += 1
                logger.info("synthetic Synapse %s case %d/%d: %s", key, index, total, case)
        description = (
            f"Synthetic Synapse-like abdominal CT (AbdomenCTPhantom, seed {seed}, grid {tuple(phantom.shape)}, "
            f"spacing {phantom.spacing} mm); arrays (H, W, D), orientation {SYNAPSE_AXCODES}, HU as int16."
        )
        write_datalist(tmp / "dataset.json", _datalist(**splits, description=description, seed=seed, synthetic=True))
    if not datalist_path.is_file():  # pragma: no cover - another process left something else there
        raise FileNotFoundError(f"{datalist_path} is missing after generation")
    return str(datalist_path)


# --------------------------------------------------------------------------------------------------
# converter of the published (TransUNet-preprocessed) layout
# --------------------------------------------------------------------------------------------------
def _find_list(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    for folder in dirs:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _read_list(path: Path, suffixes: Sequence[str]) -> list[str]:
    entries = []
    for line in path.read_text().splitlines():
        entry = line.strip()
        for suffix in suffixes:
            entry = entry.removesuffix(suffix)
        if entry:
            entries.append(entry)
    return entries


def _list_dirs(src: Path, list_dir: str | os.PathLike | None) -> list[Path]:
    if list_dir is not None:
        folder = Path(list_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"list_dir {folder} does not exist")
        return [folder]
    return [src, src / "lists" / "lists_Synapse", src / "lists"]


def _names_from_list_or_folder(
    dirs: Sequence[Path], list_names: Sequence[str], folder: Path, suffix: str, required: bool
) -> list[str]:
    """Entries of the first split list found in ``dirs``, or every ``*suffix`` file of ``folder``."""
    list_path = _find_list(dirs, list_names)
    if list_path is None:
        if required:
            raise FileNotFoundError(f"none of {list(list_names)} found in {dirs[0]}")
        names = sorted(p.name.removesuffix(suffix) for p in folder.glob(f"*{suffix}"))
        logger.info("no split list for %s; using all %d files", folder, len(names))
    else:
        names = _read_list(list_path, (suffix,))
        logger.info("split list %s: %d entries", list_path, len(names))
    missing = [folder / f"{n}{suffix}" for n in names if not (folder / f"{n}{suffix}").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} listed file(s) missing, first: {missing[0]}")
    if not names:
        raise FileNotFoundError(f"no {suffix} files in {folder}")
    return names


def _group_slices(names: Sequence[str]) -> dict[str, list[str]]:
    """Group ``caseXXXX_sliceYYY`` names per case (sorted), slices in increasing index."""
    cases: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = _SLICE_NAME.match(name)
        if match is None:
            raise ValueError(f"unexpected training slice name {name!r} (expected caseXXXX_sliceYYY)")
        cases.setdefault(match["case"], []).append((int(match["index"]), name))
    grouped = {}
    for case in sorted(cases):
        indices = sorted(cases[case])
        numbers = [i for i, _ in indices]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            logger.warning(
                "%s: slice numbers are not contiguous (%d..%d, %d slices)", case, numbers[0], numbers[-1], len(numbers)
            )
        grouped[case] = [name for _, name in indices]
    return grouped


def _to_hu(image: np.ndarray, path: Path) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.size and (image.min() < -0.01 or image.max() > 1.01):
        logger.warning("%s: intensities in [%.3g, %.3g], expected [0, 1]", path, image.min(), image.max())
    return image * np.float32(HU_MAX - HU_MIN) + np.float32(HU_MIN)


def _to_label(label: np.ndarray, path: Path) -> np.ndarray:
    label = np.asarray(label)
    rounded = np.rint(label)
    if label.size and (np.any(rounded != label) or rounded.min() < 0 or rounded.max() >= len(SYNAPSE_CLASSES)):
        top = len(SYNAPSE_CLASSES) - 1
        raise ValueError(f"{path}: labels must be integers in 0..{top}, got values {np.unique(label)[:10]}")
    return rounded.astype(np.uint8)


def _read_arrays(path: Path, arrays, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``label`` of an npz/h5 mapping, with checks that name the file."""
    missing = [k for k in ("image", "label") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; found {sorted(arrays.keys())}")
    image, label = np.asarray(arrays["image"][()]), np.asarray(arrays["label"][()])
    if image.ndim != ndim or image.shape != label.shape:
        raise ValueError(
            f"{path}: expected {ndim}D image and label of equal shape, got {image.shape} and {label.shape}"
        )
    return _to_hu(image, path), _to_label(label, path)


def _load_training_case(folder: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stack a case's npz slices (in order) into ``(H, W, D)`` HU image and label volumes."""
    images, labels = [], []
    for name in names:
        path = folder / f"{name}.npz"
        with np.load(path) as data:
            image, label = _read_arrays(path, {k: data[k] for k in data.files}, ndim=2)
        if images and image.shape != images[0].shape:
            raise ValueError(f"{path}: slice shape {image.shape} differs from {images[0].shape} of {names[0]}.npz")
        images.append(image)
        labels.append(label)
    return np.stack(images, axis=-1), np.stack(labels, axis=-1)


def _load_test_case(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``D x H x W`` h5 volume as ``(H, W, D)`` HU image and label."""
    import h5py

    with h5py.File(path, "r") as f:
        image, label = _read_arrays(path, f, ndim=3)
    return image.transpose(1, 2, 0), label.transpose(1, 2, 0)


def convert_synapse(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    num_validation: int = 2,
    list_dir: str | os.PathLike | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> str:
    """Convert the TransUNet-preprocessed Synapse data into NIfTI volumes and a datalist.

    Input (``src_dir``): ``train_npz/caseXXXX_sliceYYY.npz`` (2D ``image`` in [0, 1] and ``label``)
    and ``test_vol_h5/caseXXXX.npy.h5`` (``image`` and ``label``, ``D x H x W``). The split lists
    ``train_slice_synapse.txt``/``test_vol_synapse.txt`` (LeViT-UNet) or ``train.txt``/``test_vol.txt``
    (TransUNet) are used when found in ``list_dir`` (then required) or in ``src_dir``,
    ``src_dir/lists/lists_Synapse`` or ``src_dir/lists``; otherwise every file found is used.

    Each training case's slices are stacked in slice order into one ``(H, W, D)`` volume, test volumes
    are transposed to ``(H, W, D)``, intensities are mapped back to HU with ``x * 400 - 125`` and
    labels kept (0..8). The last ``num_validation`` training cases (sorted by name) form the
    ``validation`` split, so model selection never sees the test cases. The output folder is written
    atomically and must not exist yet (or be empty).

    Args:
        src_dir: root of the published layout.
        dst_dir: output dataset folder.
        num_validation: training cases held out for validation.
        list_dir: folder holding the split lists (optional).
        spacing: voxel size written in the NIfTI headers (the published arrays have none).

    Returns:
        path of ``dst_dir/dataset.json``.

    Raises:
        FileNotFoundError: missing folder, list or listed file.
        FileExistsError: ``dst_dir`` exists and is not empty.
        ValueError: an npz/h5 file without ``image``/``label``, inconsistent shapes, bad labels, or a
            ``num_validation`` that leaves no training case.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    train_dir, test_dir = src / "train_npz", src / "test_vol_h5"
    for folder in (src, train_dir, test_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"Synapse folder not found: {folder}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} already exists and is not empty")
    dirs = _list_dirs(src, list_dir)
    required = list_dir is not None
    train_cases = _group_slices(_names_from_list_or_folder(dirs, _TRAIN_LISTS, train_dir, ".npz", required))
    test_cases = _names_from_list_or_folder(dirs, _TEST_LISTS, test_dir, ".npy.h5", required)
    if not 0 <= num_validation < len(train_cases):
        n = len(train_cases)
        raise ValueError(f"num_validation={num_validation} must be in [0, {n - 1}] ({n} training cases)")
    names = list(train_cases)
    validation_names = set(names[len(names) - num_validation :])
    splits: dict[str, list] = {"training": [], "validation": [], "test": []}
    with build_dataset_atomically(dst) as tmp:
        for case, slices in train_cases.items():
            image, label = _load_training_case(train_dir, slices)
            key = "validation" if case in validation_names else "training"
            item = _split_item(case, test=False)
            _write_case(tmp, item, image, label, spacing, np.float32)
            splits[key].append(item)
            logger.info("Synapse %s case %s: %d slices -> %s", key, case, len(slices), image.shape)
        for case in test_cases:
            image, label = _load_test_case(test_dir / f"{case}.npy.h5")
            item = _split_item(case, test=True)
            _write_case(tmp, item, image, label, spacing, np.float32)
            splits["test"].append(item)
            logger.info("Synapse test case %s -> %s", case, image.shape)
        datalist = _datalist(**splits, description=_DESCRIPTION_CONVERTED, source=str(src.absolute()))
        write_datalist(tmp / "dataset.json", datalist)
    return str(dst / "dataset.json")
