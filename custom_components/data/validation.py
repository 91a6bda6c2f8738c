"""Checks of user-supplied inputs: up front, before a workflow writes anything, and once each image is loaded.

A bundle's ``initialize`` step calls :func:`check_datalist` so that a wrong datalist entry stops the run with one
message naming every bad file and what is wrong with it, before a model, prediction or log is written. The checks
cover: a missing key or file, an unreadable or truncated file, an image whose number of spatial dimensions is not the
one the bundle expects, an image/label shape mismatch, label values outside ``[0, num_classes)`` (or outside a list of
accepted values), an empty split, and a DICOM folder holding several series.

What only the loaded voxels tell (NaN or infinite values, absurd magnitudes, the number of channels, the dimensions
after loading) is checked by :func:`image_problems`, which the transform
:class:`custom_components.transforms.CheckImaged` runs right after ``LoadImaged``, before the network.

:func:`select_series` resolves a DICOM folder with several series to the one the user chose (``--series``), and
:func:`report_input_errors` makes a ``python -m monai.bundle`` run that fails on bad input end with the message.
"""

from __future__ import annotations

import atexit
import gzip
import logging
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InputDataError", "check_datalist", "require_file", "image_shape", "image_problems", "DEFAULT_MAX_ABS",
    "dicom_series", "select_series", "input_error_message", "report_input_errors",
]

logger = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# voxel magnitudes above this are no measurement (a corrupt file, an unconverted float format): min-max scaling would
# squash every other voxel to 0, and float32 arithmetic (squares in normalisation layers) overflows near 1e19
DEFAULT_MAX_ABS = 1e10
# a trailing axis of at most this many entries can be the channels of a colour image (RGB, RGBA)
_MAX_COLOUR_CHANNELS = 4


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


def _nifti_data_problem(path: str) -> str | None:
    """Why the voxel data of a NIfTI file cannot be read in full (truncated or corrupt), or ``None``.

    An uncompressed file must be at least header + data long. For ``.nii.gz`` the gzip trailer's length field is
    compared with the size the header announces; only when they differ (a truncated file, or an unusual but valid
    multi-member file) is the whole stream decompressed to find out, so the check costs no decompression for a good
    file."""
    import nibabel as nib

    img = nib.load(path)
    header = img.header
    offset = getattr(img.dataobj, "offset", None)  # where the reader starts (the header's vox_offset may read 0)
    offset = int(header.get_data_offset() if offset is None else offset)
    expected = offset + int(np.prod(img.shape)) * header.get_data_dtype().itemsize
    if not path.lower().endswith(".gz"):
        size = os.path.getsize(path)
        return None if size >= expected else f"truncated: {size} bytes, its header needs {expected}"
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return None
    except OSError:
        pass
    try:
        with gzip.open(path, "rb") as g:
            n = 0
            while chunk := g.read(1 << 24):
                n += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return f"truncated or corrupt compressed data ({type(e).__name__}: {e})"
    return None if n >= expected else f"truncated: {n} bytes of data, its header needs {expected}"


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
    label_values: Sequence[float] | None = None,
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
        if os.path.isdir(path):
            try:
                series = dicom_series(path)
            except OSError as e:
                problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
                continue
            if len(series) > 1:
                problems.append(_several_series_message(path, series))
                continue
        try:
            shape = image_shape(path)
            truncated = _nifti_data_problem(path) if _is_nifti(path) else None
        except Exception as e:  # noqa: BLE001 - any reader failure means the file cannot be used
            problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
            continue
        if truncated:
            problems.append(f"{path}: {truncated}")
            continue
        spatial = _squeeze_trailing(shape, min(allowed))
        n_channel = channel_dims if key != label_key else 0
        colour = n_channel and len(spatial) - n_channel in allowed and spatial[-1] <= _MAX_COLOUR_CHANNELS
        if len(spatial) not in allowed and not colour:
            problems.append(
                f"{path}: has {len(shape)} dimensions {list(shape)}, expected a {'/'.join(map(str, allowed))}D image"
                + (f" (a last axis of at most {_MAX_COLOUR_CHANNELS} would be colour channels)" if n_channel else "")
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
        if (num_classes is not None or label_values is not None) and not problems:
            try:
                values = np.unique(_load_array(path))
            except Exception as e:  # noqa: BLE001
                problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
                return problems
            if label_values is not None:
                bad = values[~np.isin(values, np.asarray(label_values, dtype=float))]
                expected = "the accepted label values " + ", ".join(f"{v:g}" for v in label_values)
            else:
                bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
                expected = f"the class range 0..{num_classes - 1}"
            if bad.size:
                shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" ..." if bad.size > 8 else "")
                problems.append(f"{path}: label values outside {expected}: {shown}")
    return problems


def check_datalist(
    items: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Mapping[str, Any]]],
    image_keys: str | Sequence[str] = "image",
    label_key: str | None = "label",
    spatial_dims: int | Sequence[int] = 3,
    num_classes: int | None = None,
    channel_dims: int = 0,
    source: str = "datalist",
    max_report: int = 20,
    label_values: Sequence[float] | None = None,
) -> int:
    """Check every item of a datalist before a workflow starts, raising one error that lists all problems.

    Args:
        items: datalist entries, e.g. ``load_decathlon_datalist(...)`` output (paths already absolute); or a mapping
            of split name to entries (``{"training": [...], "validation": [...]}``), where every split must have items.
        image_keys: keys of the image entries to check.
        label_key: key of the label entry, or ``None`` when there is no label (inference).
        spatial_dims: accepted number(s) of spatial dimensions of the images, e.g. 3 for volumes,
            ``(2, 3)`` for a workflow that takes both.
        num_classes: when given, labels must hold integers in ``[0, num_classes)`` (the whole label is read).
        channel_dims: number of extra (channel) dimensions an image may carry, e.g. 1 for RGB PNGs (a last axis of
            at most 4 entries).
        source: name of the datalist (its file path) used in messages.
        max_report: at most this many problems are listed in the message.
        label_values: when given, the only values a label may hold (e.g. ``[0, 1, 255]`` for binary masks saved as
            0/1 or 0/255); replaces the ``num_classes`` range check.

    Returns:
        the number of items checked.

    Raises:
        InputDataError: naming each bad file and what is wrong with it.
    """
    keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
    splits = dict(items) if isinstance(items, Mapping) else {None: items}
    problems: list[str] = []
    n = 0
    for split, split_items in splits.items():
        count = 0
        for count, item in enumerate(split_items, start=1):
            problems += _check_item(n + count - 1, item, keys, label_key, spatial_dims, num_classes, channel_dims,
                                    label_values)
        if split is not None and count == 0:
            problems.append(f"{source}: the '{split}' split has no items")
        n += count
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



# ------------------------------------------------------------------------------------------------------------------
# loaded voxels


def image_problems(
    image,
    spatial_dims: int | Sequence[int] = 3,
    channels: int | Sequence[int] | None = 1,
    max_abs: float | None = DEFAULT_MAX_ABS,
) -> list[str]:
    """What is wrong with a loaded channel-first image (``LoadImaged(..., ensure_channel_first=True)`` output).

    Args:
        image: array or tensor ``(C, *spatial)``; trailing singleton spatial axes beyond the fewest accepted spatial
            dimensions are ignored (a one-image DICOM series loads as ``(1, H, W, 1)``).
        spatial_dims: accepted number(s) of spatial dimensions.
        channels: accepted number(s) of channels (``None``: any).
        max_abs: largest accepted voxel magnitude (``None``: no limit); NaN and infinite voxels are always refused.

    Returns:
        one phrase per problem (empty when the image is usable).
    """
    import torch

    allowed = (spatial_dims,) if isinstance(spatial_dims, int) else tuple(spatial_dims)
    accepted = None if channels is None else ((channels,) if isinstance(channels, int) else tuple(channels))
    shape = tuple(int(s) for s in image.shape)
    problems = []
    if len(shape) < 2:
        return [f"has shape {list(shape)}, expected channels and {'/'.join(map(str, allowed))} spatial dimensions"]
    n_channels, spatial = shape[0], _squeeze_trailing(shape[1:], min(allowed))
    if accepted is not None and n_channels not in accepted:
        names = {1: "grey", 3: "RGB", 4: "RGBA"}
        expected = " or ".join(f"{c} ({names[c]})" if c in names else str(c) for c in accepted)
        problems.append(f"has {n_channels} channels (shape {list(shape)}), expected {expected}")
    if len(spatial) not in allowed:
        problems.append(f"is a {len(spatial)}D image {list(spatial)}, expected a {'/'.join(map(str, allowed))}D image")
    x = image.as_tensor() if hasattr(image, "as_tensor") else image  # a MetaTensor: plain tensor maths
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if x.is_floating_point() or x.is_complex():
        finite = torch.isfinite(x)
        n_nan, n_bad = int(torch.isnan(x).sum()), int((~finite).sum())
        if n_bad:
            parts = ([f"{n_nan} NaN"] if n_nan else []) + ([f"{n_bad - n_nan} infinite"] if n_bad - n_nan else [])
            problems.append(f"has {' and '.join(parts)} voxel value(s)")
        biggest = float(x[finite].abs().max()) if bool(finite.any()) else 0.0
    else:
        biggest = float(x.abs().max()) if x.numel() else 0.0
    if max_abs is not None and biggest > max_abs:
        problems.append(f"has voxel values up to {biggest:.3g} in magnitude (accepted: at most {max_abs:g}; a corrupt "
                        "or unscaled image)")
    return problems


# ------------------------------------------------------------------------------------------------------------------
# DICOM folders with several series

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def dicom_series(folder: str | os.PathLike) -> dict[str, dict]:
    """The DICOM series of the files directly in ``folder``: SeriesInstanceUID -> ``{"files", "modality",
    "description"}`` (files that are not DICOM, or have no SeriesInstanceUID, are left out; headers only are read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, dict] = {}
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "Modality", "SeriesDescription"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            continue
        entry = series.setdefault(uid, {"files": [], "modality": str(ds.get("Modality", "") or ""),
                                        "description": str(ds.get("SeriesDescription", "") or "")})
        entry["files"].append(str(f))
    return series


def _series_listing(series: Mapping[str, dict]) -> str:
    def one(uid, s):
        description = f", {s['description']!r}" if s["description"] else ""
        return f"{uid} ({s['modality'] or '?'}, {len(s['files'])} files{description})"

    return "; ".join(one(uid, s) for uid, s in series.items())


def _several_series_message(path: str | os.PathLike, series: Mapping[str, dict]) -> str:
    return (f"{path}: holds {len(series)} DICOM series; choose one with --series <SeriesInstanceUID>: "
            + _series_listing(series))


_VIEWS: list[str] = []


def _remove_views() -> None:
    for view in _VIEWS:
        shutil.rmtree(view, ignore_errors=True)


def _series_view(folder: Path, files: Sequence[str]) -> str:
    """A temporary folder with the same name as ``folder`` holding links to ``files`` only (removed at exit): ITK
    reads it as the one series, and the prediction keeps the name of the user's folder."""
    if not _VIEWS:
        atexit.register(_remove_views)
    root = tempfile.mkdtemp(prefix="series_view_")
    _VIEWS.append(root)
    view = Path(root) / folder.name
    view.mkdir()
    for f in files:
        try:
            os.symlink(f, view / Path(f).name)
        except OSError:
            shutil.copy2(f, view / Path(f).name)
    return str(view)


def select_series(items: Sequence[Mapping[str, Any]], series: str | None = None,
                  image_key: str = "image") -> list[dict]:
    """Resolve DICOM folders to one series each.

    A folder with one series is kept as it is. A folder with several series is refused unless ``series`` (a
    SeriesInstanceUID, ``--series`` on the command line) names one of them; it is then replaced by a temporary view of
    that series' files (the item keeps the user's folder as ``<image_key>_source`` for messages).

    Raises:
        InputDataError: a folder holds several series and none was chosen, or the chosen series is not in a DICOM
            folder of the input (the message lists the series found).
    """
    if series is not None:
        series = str(series).strip()
        if not _UID.match(series) or len(series) > 64:
            raise InputDataError(f"--series {series!r}: not a DICOM UID (digits and dots, at most 64 characters)")
    out, problems, found = [], [], False
    for item in items:
        item = dict(item)
        path = Path(str(item.get(image_key, "")))
        groups = dicom_series(path) if path.is_dir() else {}
        if not groups or (len(groups) == 1 and series in (None, *groups)):
            found = found or series in groups
            out.append(item)
            continue
        if series is None:
            problems.append(_several_series_message(path, groups))
        elif series not in groups:
            problems.append(f"{path}: has no series {series}; it holds: {_series_listing(groups)}")
        else:
            found = True
            item[f"{image_key}_source"] = str(path)
            item[image_key] = _series_view(path, groups[series]["files"])
        out.append(item)
    if problems:
        raise InputDataError("\n".join(problems) if len(problems) > 1 else problems[0])
    if series is not None and not found:
        raise InputDataError(f"--series {series}: the input has no DICOM folder with this series")
    return out


# ------------------------------------------------------------------------------------------------------------------
# the last line of a failed run


def input_error_message(exc: BaseException) -> str | None:
    """The message of the :class:`InputDataError` behind ``exc`` (its cause/context chain; an error re-raised from a
    DataLoader worker carries it only as text), or ``None``."""
    seen, stack, chain = set(), [exc], []
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, InputDataError):
            return str(e)
        chain.append(e)
        stack += [e.__cause__, e.__context__]
    for e in chain:
        found = re.findall(r"InputDataError: (.+)", str(e))
        if found:
            return found[-1].strip()
    return None


def report_input_errors() -> None:
    """In a ``python -m monai.bundle`` process, end the output of a run that fails on bad input with one line,
    ``InputDataError: <file>: <what is wrong>``, after the usual traceback (which MONAI's config parser and engine
    wrap in errors of their own). Elsewhere (a library, a server, pytest) nothing is changed."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "monai.bundle.__main__" or getattr(sys.excepthook, "_reports_input_errors", 0):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        message = input_error_message(exc) if isinstance(exc, BaseException) else None
        if message:
            print(f"\nInputDataError: {message}", file=sys.stderr, flush=True)

    hook._reports_input_errors = 1  # type: ignore[attr-defined]
    sys.excepthook = hook
