"""Writing synthetic (or converted) datasets: NIfTI, PNG, datalist JSON, atomic dataset folders; the atomic
file writer (:func:`atomic_write`, :func:`save_torch_atomically`) that checkpoints and weights files also use.

Orientation of NIfTI files
--------------------------
:func:`nifti_affine` builds the affine from the voxel spacing and the *axis codes* of the array: the
anatomical direction towards which each array axis increases, as ``nibabel.aff2axcodes`` reports it
(``R``/``L``, ``A``/``P``, ``S``/``I``). The default ``"LPS"`` (axis 0 towards the patient's left,
axis 1 towards posterior, axis 2 towards superior) is the array order of the phantoms in
:mod:`.phantoms` and of a CT converted from DICOM; its affine is ``diag(-sx, -sy, sz)`` in RAS+
world coordinates. The translation puts the centre of the volume at the world origin, so images and
labels of one case share the same geometry whatever their dtype.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "nifti_affine", "write_nifti", "write_png", "write_datalist", "build_dataset_atomically", "atomic_write",
    "save_torch_atomically",
]

logger = logging.getLogger(__name__)

_AXIS_OF_CODE = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def nifti_affine(spacing: Sequence[float], shape: Sequence[int] | None = None, axcodes: str = "LPS") -> np.ndarray:
    """4x4 RAS+ affine for an array with the given voxel spacing and axis codes.

    Args:
        spacing: voxel size (mm) per array axis (2 or 3 values; a missing third axis gets 1 mm).
        shape: array shape; when given, the volume centre is placed at the world origin, otherwise
            voxel 0 is.
        axcodes: direction each array axis increases towards, e.g. ``"LPS"`` or ``"PLS"``; three
            letters, one from each of ``RL``, ``AP``, ``SI``.

    Returns:
        float64 ``(4, 4)`` affine with ``nibabel.aff2axcodes(affine) == tuple(axcodes)``.
    """
    codes = axcodes.upper()
    if len(codes) != 3 or any(c not in _AXIS_OF_CODE for c in codes) or len({_AXIS_OF_CODE[c][0] for c in codes}) != 3:
        raise ValueError(f"axcodes must take one letter from each of RL, AP, SI, got {axcodes!r}")
    spacing = [float(s) for s in spacing] + [1.0] * (3 - len(spacing))
    affine = np.eye(4)
    for axis, (code, size) in enumerate(zip(codes, spacing)):
        world, sign = _AXIS_OF_CODE[code]
        affine[:3, axis] = 0.0
        affine[world, axis] = sign * size
    if shape is not None:
        centre = (np.asarray(list(shape) + [1] * (3 - len(shape)), float)[:3] - 1.0) / 2.0
        affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def _default_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) minus the process umask, as ``open``/``mkdir`` do."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def _fsync(path: str | os.PathLike) -> None:
    """Flush ``path`` (a file, or a folder's entries) to the disk; a no-op where the OS cannot open a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> str:
    """Call ``write(tmp_path)`` on a temporary sibling of ``path``, then rename it onto ``path``.

    The temporary file (``.<name>.<random>.tmp`` in the same folder) is flushed to the disk before the rename
    (``os.replace``) and the folder after it, so ``path`` is at every moment either its previous content or the
    complete new one, also after a crash or a ``kill -9``. When ``write`` raises, the temporary file is removed and
    ``path`` is left as it was. A process killed during ``write`` leaves the temporary file behind (never a
    file of the final name).

    Returns:
        ``path``, as a string.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _default_mode(0o666))  # mkstemp creates 0600
        write(Path(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync(path.parent)
    return str(path)


def save_torch_atomically(obj, path: str | os.PathLike, **kwargs) -> str:
    """``torch.save(obj, path, **kwargs)`` through :func:`atomic_write`: a crash never leaves a truncated file."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp, **kwargs))


def write_nifti(
    array: np.ndarray,
    path: str | os.PathLike,
    spacing: Sequence[float],
    dtype: np.dtype | type | str | None = None,
    axcodes: str = "LPS",
) -> str:
    """Write a 2D/3D array as NIfTI-1 (``.nii`` or ``.nii.gz``) with the affine of :func:`nifti_affine`.

    Args:
        array: image or label array, indexed as described by ``axcodes``.
        path: output file.
        spacing: voxel size (mm) per axis.
        dtype: stored data type (e.g. ``np.int16`` for HU, ``np.uint8`` for labels); integer types
            round the values first. Default: the array's dtype.
        axcodes: orientation of the array axes (default ``"LPS"``).

    Returns:
        the path written, as a string.
    """
    import nibabel as nib

    data = np.asarray(array)
    if data.ndim not in (2, 3):
        raise ValueError(f"write_nifti expects a 2D or 3D array, got shape {data.shape}")
    if len(spacing) != data.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match array shape {data.shape}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
            info = np.iinfo(dtype)
            data = np.clip(np.rint(data), info.min, info.max)
        data = data.astype(dtype, copy=False)
    image = nib.Nifti1Image(data, nifti_affine(spacing, data.shape, axcodes))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return str(path)


def write_png(array2d: np.ndarray, path: str | os.PathLike, bits: int | None = None) -> str:
    """Write a 2D array as a grayscale PNG (row ``i`` of the array is row ``i`` of the image).

    Args:
        array2d: ``bool`` (written 0/255), ``uint8`` (8-bit), ``uint16`` (16-bit), other integers
            (must fit in ``bits``), or floats in ``[0, 1]`` (clipped, scaled to ``2**bits - 1``).
        path: output file.
        bits: 8 or 16; default 8, or 16 for ``uint16`` input.

    Returns:
        the path written, as a string.
    """
    from PIL import Image

    data = np.asarray(array2d)
    if data.ndim != 2:
        raise ValueError(f"write_png expects a 2D array, got shape {data.shape}")
    bits = bits or (16 if data.dtype == np.uint16 else 8)
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = 2**bits - 1
    if data.dtype == bool:
        data = data.astype(np.int64) * top
    elif np.issubdtype(data.dtype, np.floating):
        data = np.rint(np.clip(data, 0.0, 1.0) * top)
    elif data.size and (data.min() < 0 or data.max() > top):
        raise ValueError(f"integer values in [{data.min()}, {data.max()}] do not fit in {bits} bits")
    data = np.ascontiguousarray(data.astype(np.uint8 if bits == 8 else np.uint16))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(str(path), format="PNG")
    return str(path)


def write_datalist(path: str | os.PathLike, datalist: dict) -> str:
    """Write a datalist (``training``/``validation``/``test`` lists...) as JSON, atomically.

    The JSON goes to a temporary file next to ``path`` that is renamed onto ``path`` (``os.replace``),
    so a reader never sees a half-written file.

    Returns:
        the path written, as a string.
    """
    path = Path(path)
    text = json.dumps(datalist, indent=2)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    return str(path)


@contextlib.contextmanager
def build_dataset_atomically(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Build a dataset folder in a temporary sibling and move it into place only on success.

    Yields a new empty folder next to ``final_dir`` (same file system, so the final rename is atomic).
    When the ``with`` block ends normally the folder is renamed to ``final_dir``; when it raises, the
    folder is deleted and the exception propagates, so a crash never leaves a half-written dataset.
    If ``final_dir`` has meanwhile appeared with content (for example another process of a
    ``torchrun`` job finished first), ours is discarded silently and theirs is kept. An empty existing
    ``final_dir`` is replaced.

    Example::

        with build_dataset_atomically("data/synapse") as tmp:
            write_nifti(image, tmp / "imagesTr" / "case_0000.nii.gz", spacing)
            write_datalist(tmp / "dataset.json", datalist)
    """
    final = Path(final_dir).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        os.chmod(tmp, _default_mode(0o777))  # mkdtemp creates 0700
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.is_dir() and any(final.iterdir()):
            logger.info("%s was created by another process meanwhile; keeping it", final)
            return
        raise
    logger.info("dataset written to %s", final)
