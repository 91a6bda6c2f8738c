"""Datalists: the one data convention of every bundle (a MONAI decathlon-style JSON).

- :func:`ensure_dataset` creates a bundle's embedded synthetic dataset under ``dataset_dir`` when, and
  only when, there is none, and refuses to write into a folder that holds something else;
- :func:`load_items` reads one split of a datalist with paths made absolute;
- :func:`inference_items` turns what a user gives inference (a datalist, a folder of images, a
  DICOM series folder or one file) into datalist items.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from monai.data import load_decathlon_datalist

__all__ = ["DATALIST_NAME", "ensure_dataset", "load_items", "inference_items", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

DATALIST_NAME = "dataset.json"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


def ensure_dataset(dataset_dir: str | os.PathLike, generator: Callable[..., object], required: str | None = None) -> str:
    """Make sure ``dataset_dir/dataset.json`` exists, generating the synthetic demo dataset if the folder is new.

    Args:
        dataset_dir: folder of the dataset (real data converted to the datalist layout, or the synthetic one).
        generator: called as ``generator(dataset_dir=...)`` to write the synthetic dataset (atomically) when
            ``dataset_dir`` does not exist or is empty.
        required: the input a workflow will read; when it lies outside ``dataset_dir`` (the user points inference at
            their own files) nothing is generated.

    Returns:
        the datalist path.

    Raises:
        FileNotFoundError: ``dataset_dir`` exists, is not empty and has no ``dataset.json`` (so it is not ours to
            fill: convert the real data first).
    """
    root = Path(dataset_dir).expanduser().resolve()
    datalist = root / DATALIST_NAME
    if required is not None and root not in Path(required).expanduser().resolve().parents:
        return str(datalist)
    if datalist.is_file():
        return str(datalist)
    if root.is_dir() and any(root.iterdir()):
        raise FileNotFoundError(
            f"{root} is not empty but has no {DATALIST_NAME}: convert the data into the datalist layout first "
            f"(see the bundle's docs/README.md), or point dataset_dir at an empty or new folder for the synthetic demo data"
        )
    logger.info(f"no dataset in {root}: generating the synthetic demo dataset (done once)")
    generator(dataset_dir=str(root))
    if not datalist.is_file():
        raise RuntimeError(f"the synthetic data generator did not write {datalist}")
    return str(datalist)


def load_items(datalist: str | os.PathLike, key: str, base_dir: str | os.PathLike | None = None) -> list[dict]:
    """Items of one split (``training``, ``validation``, ``test``, ``unlabeled``) with absolute paths.

    Raises:
        FileNotFoundError: the datalist does not exist.
        KeyError: the split is missing (the message names the datalist and the splits it has).
    """
    path = Path(datalist)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path}")
    try:
        return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=base_dir)
    except ValueError as e:
        import json

        splits = sorted(k for k, v in json.loads(path.read_text()).items() if isinstance(v, list))
        raise KeyError(f"{path}: no '{key}' split (it has: {splits})") from e


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")


def _is_dicom_file(f: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM Part 10 preamble (``DICM`` at byte 128), whatever its name (PACS
    exports often name files by SOP Instance UID, ``1.2.840....``, or ``IM0001``)."""
    if not f.is_file() or f.name.startswith("."):
        return False
    if f.suffix.lower() == ".dcm":
        return True
    from pydicom.misc import is_dicom

    try:
        return is_dicom(f)
    except OSError:
        return False


def _is_dicom_series(p: Path, probe: int = 8) -> bool:
    """A folder whose first ``probe`` files (sorted) include a DICOM file."""
    return p.is_dir() and any(_is_dicom_file(f) for f in sorted(p.iterdir())[:probe])


def inference_items(source: str | os.PathLike, key: str = "test", image_key: str = "image") -> list[dict]:
    """Datalist items for inference from what the user gives.

    Args:
        source: a datalist JSON (its ``key`` split is used; labels are kept for evaluation), a folder (each image
            file in it and each DICOM-series subfolder becomes an item; a folder of DICOM files, ``.dcm`` or any
            name with the DICOM preamble, is one series, read with ITK keeping its patient geometry),
            or a single image file.
        key: the split of a datalist JSON.
        image_key: the key of the image entry in the returned items.

    Raises:
        FileNotFoundError: ``source`` does not exist, or a folder holds no image.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json":
        return load_items(path, key)
    if path.is_file():
        return [{image_key: str(path.resolve())}]
    if not path.is_dir():
        raise FileNotFoundError(f"inference input not found: {path} (give a datalist .json, a folder or an image file)")
    if _is_dicom_series(path) and not any(_is_image_file(f) and f.suffix.lower() != ".dcm" for f in path.iterdir()):
        return [{image_key: str(path.resolve())}]
    items = [
        {image_key: str(p.resolve())}
        for p in sorted(path.iterdir())
        if _is_image_file(p) or (p.is_dir() and _is_dicom_series(p))
    ]
    if not items:
        raise FileNotFoundError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) or DICOM series folders in it")
    return items
