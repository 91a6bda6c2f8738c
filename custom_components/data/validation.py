"""Checks of user-supplied inputs that run before a workflow writes anything.

A bundle's ``initialize`` step calls these so that a wrong datalist entry stops the run with one
message naming every bad file and what is wrong with it, before a model, prediction or log is
written. The checks cover: a missing key or file, an unreadable file, an image whose number of
spatial dimensions is not the one the bundle expects, an image/label shape mismatch, and label
values outside ``[0, num_classes)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["InputDataError", "check_datalist", "require_file", "image_shape"]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


class InputDataError(ValueError):
    """Raised when user-supplied data cannot be used; the message lists every problem found."""


def _is_nifti(path: str) -> bool:
    return path.lower().endswith(_NIFTI_SUFFIXES)


def _squeeze_trailing(shape: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > spatial_dims and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def image_shape(path: str) -> tuple[int, ...]:
    """Shape of an image file (NIfTI header only; other formats and DICOM folders via MONAI's ``LoadImage``)."""
    if _is_nifti(path):
        import nibabel as nib

        return tuple(int(s) for s in nib.load(path).shape)
    return tuple(int(s) for s in _load_array(path).shape)


def _load_array(path: str) -> np.ndarray:
    if _is_nifti(path):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj)
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(path))


def require_file(path: str | os.PathLike, what: str) -> str:
    """Return ``path`` if it is an existing file, else raise ``FileNotFoundError`` saying what it was for."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: file not found: {path}")
    return str(path)


def _check_item(
    idx: int,
    item: Mapping[str, Any],
    image_keys: Sequence[str],
    label_key: str | None,
    spatial_dims: int | Sequence[int],
    num_classes: int | None,
    channel_dims: int,
) -> list[str]:
    problems: list[str] = []
    allowed = (spatial_dims,) if isinstance(spatial_dims, int) else tuple(spatial_dims)
    keys = list(image_keys) + ([label_key] if label_key else [])
    shapes: dict[str, tuple[int, ...]] = {}
    for key in keys:
        if key not in item:
            problems.append(f"item {idx}: no '{key}' entry (keys: {sorted(item)})")
            continue
        path = str(item[key])
        if not os.path.exists(path):
            problems.append(f"{path}: file not found (item {idx}, key '{key}')")
            continue
        try:
            shape = image_shape(path)
        except Exception as e:  # noqa: BLE001 - any reader failure means the file cannot be used
            problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
            continue
        spatial = _squeeze_trailing(shape, min(allowed))
        n_channel = channel_dims if key != label_key else 0
        if len(spatial) not in allowed and len(spatial) - n_channel not in allowed:
            problems.append(
                f"{path}: has {len(shape)} dimensions {list(shape)}, expected a {'/'.join(map(str, allowed))}D image"
            )
            continue
        shapes[key] = spatial
    if label_key and label_key in shapes:
        path = str(item[label_key])
        for key in image_keys:
            if key in shapes and shapes[key][: len(shapes[label_key])] != shapes[label_key]:
                problems.append(
                    f"{path}: label shape {list(shapes[label_key])} differs from image {item[key]} "
                    f"shape {list(shapes[key])}"
                )
        if num_classes is not None and not problems:
            try:
                values = np.unique(_load_array(path))
            except Exception as e:  # noqa: BLE001
                problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
                return problems
            bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
            if bad.size:
                shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" ..." if bad.size > 8 else "")
                problems.append(
                    f"{path}: label values outside the class range 0..{num_classes - 1}: {shown}"
                )
    return problems


def check_datalist(
    items: Iterable[Mapping[str, Any]],
    image_keys: str | Sequence[str] = "image",
    label_key: str | None = "label",
    spatial_dims: int | Sequence[int] = 3,
    num_classes: int | None = None,
    channel_dims: int = 0,
    source: str = "datalist",
    max_report: int = 20,
) -> int:
    """Check every item of a datalist before a workflow starts, raising one error that lists all problems.

    Args:
        items: datalist entries, e.g. ``load_decathlon_datalist(...)`` output (paths already absolute).
        image_keys: keys of the image entries to check.
        label_key: key of the label entry, or ``None`` when there is no label (inference).
        spatial_dims: accepted number(s) of spatial dimensions of the images, e.g. 3 for volumes,
            ``(2, 3)`` for a workflow that takes both.
        num_classes: when given, labels must hold integers in ``[0, num_classes)`` (the whole label is read).
        channel_dims: number of extra (channel) dimensions an image may carry, e.g. 1 for RGB PNGs.
        source: name of the datalist (its file path) used in messages.
        max_report: at most this many problems are listed in the message.

    Returns:
        the number of items checked.

    Raises:
        InputDataError: naming each bad file and what is wrong with it.
    """
    keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
    problems: list[str] = []
    n = 0
    for n, item in enumerate(items, start=1):
        problems += _check_item(n - 1, item, keys, label_key, spatial_dims, num_classes, channel_dims)
    if n == 0:
        raise InputDataError(f"{source}: no items to process")
    if problems:
        more = f"\n  ... and {len(problems) - max_report} more" if len(problems) > max_report else ""
        raise InputDataError(
            f"{source}: {len(problems)} problem(s) in the input data; nothing was written:\n  "
            + "\n  ".join(problems[:max_report])
            + more
        )
    logger.info(f"{source}: {n} item(s) checked")
    return n

