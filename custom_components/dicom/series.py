"""Write a volume (NIfTI or any image MONAI reads) as a DICOM series of single-frame CT or MR images.

For tests and demos: a synthetic phantom becomes the kind of input a hospital PACS holds, with its patient
geometry kept, so that reading the series back (``LoadImage`` with the ITK reader, which is what the bundles'
inference does with a DICOM folder) gives the same voxel grid and affine as reading the NIfTI file.

Geometry (DICOM patient coordinates are LPS, MONAI's affines are RAS; ``lps = diag(-1, -1, 1) @ ras``):

- voxel ``(i, j, k)`` of the array is pixel ``(row j, column i)`` of slice ``k``;
- ``ImageOrientationPatient`` = the LPS directions of increasing ``i`` (along a row) and of increasing ``j``;
- ``PixelSpacing`` = ``[spacing of j, spacing of i]`` (row spacing first, as DICOM orders it);
- ``ImagePositionPatient`` of slice ``k`` = the LPS position of voxel ``(0, 0, k)``.

DICOM readers sort slices along ``row x column`` direction, so a volume whose third axis points the other
way (a left-handed affine) is written with its slices reversed, which describes the same physical image.

Values are stored as unsigned 16-bit integers with ``RescaleSlope``/``RescaleIntercept``: CT (HU, rounded to
integers) and other integer-valued data with slope 1 (intercept -1024 for CT), other data (normalised MR in
[0, 1]) with the slope that spreads its range over 0..65535. (An MR image with a rescale is a standard
extended SOP instance, as many scanners write them: ``dciodvfy`` warns, ITK and pydicom apply it.)
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from ..data.synthetic.io import build_dataset_atomically

__all__ = ["write_dicom_series", "read_dicom_series", "series_geometry", "DicomInputError"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_STORAGE = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}


class DicomInputError(ValueError):
    """Input that cannot become (or does not match) a DICOM series; the message names the file or folder."""


def _load(image: str | os.PathLike | np.ndarray, affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(array (X, Y, Z) float64, RAS affine 4x4, a name for messages) of a file or an array."""
    if isinstance(image, (str, os.PathLike)):
        from monai.transforms import LoadImage

        path = Path(image)
        if not path.exists():
            raise DicomInputError(f"image not found: {path}")
        try:
            img = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
        except Exception as e:
            raise DicomInputError(f"{path}: cannot be read as an image ({e})") from e
        if img.shape[0] != 1:
            raise DicomInputError(f"{path}: has {img.shape[0]} channels; a DICOM series here is single-channel greyscale")
        array, affine, name = np.asarray(img[0], dtype=np.float64), np.asarray(img.affine, dtype=np.float64), str(path)
    else:
        array, name = np.asarray(image, dtype=np.float64), "array"
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or min(array.shape) < 1:
        raise DicomInputError(f"{name}: expected a 2D or 3D single-channel image, got shape {array.shape}")
    if affine.shape == (3, 3):  # a 2D image's affine: add the third axis
        affine = np.array([[affine[0, 0], affine[0, 1], 0, affine[0, 2]], [affine[1, 0], affine[1, 1], 0, affine[1, 2]],
                           [0, 0, 1, 0], [0, 0, 0, 1]])
    if affine.shape != (4, 4):
        raise DicomInputError(f"{name}: affine must be 4x4, got {affine.shape}")
    if not np.all(np.isfinite(array)):
        raise DicomInputError(f"{name}: the image has NaN or infinite values")
    return array, affine, name


def series_geometry(affine: np.ndarray, num_slices: int) -> dict:
    """DICOM plane geometry of a RAS ``affine``: orientation, pixel spacing, slice spacing, per-slice positions
    (LPS, slice ``k`` of the array), and whether the slices must be reversed to make the frame right-handed."""
    from monai.data.utils import orientation_ras_lps

    lps = orientation_ras_lps(np.asarray(affine, dtype=np.float64))
    cols = lps[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        raise DicomInputError(f"affine has a zero-length axis: {affine.tolist()}")
    dirs = cols / spacing
    if np.abs(dirs.T @ dirs - np.eye(3)).max() > 1e-4:
        raise DicomInputError("affine axes are not orthogonal (sheared): DICOM image planes cannot describe it")
    flip = float(np.dot(np.cross(dirs[:, 0], dirs[:, 1]), dirs[:, 2])) < 0
    positions = [lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3] for k in range(num_slices)]
    return {
        "orientation": [float(v) for v in np.concatenate([dirs[:, 0], dirs[:, 1]])],
        "pixel_spacing": [float(spacing[1]), float(spacing[0])],
        "slice_spacing": float(spacing[2]),
        "positions": positions,
        "flip": flip,
    }


def _quantise(array: np.ndarray, modality: str) -> tuple[np.ndarray, float, float]:
    """uint16 stored values and (slope, intercept) with ``value = stored * slope + intercept``."""
    lo, hi = float(array.min()), float(array.max())
    integer_valued = np.allclose(array, np.round(array), atol=1e-3)
    intercept = -1024.0 if modality == "CT" and lo >= -1024 else float(np.floor(lo))
    if (integer_valued or modality == "CT") and hi - intercept <= 65535:  # CT: HU rounded to integers
        slope = 1.0
    else:
        intercept = lo
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.clip(np.round((array - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) for ``value``."""
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.1e}"


def write_dicom_series(
    image: str | os.PathLike | np.ndarray,
    output_dir: str | os.PathLike,
    affine: np.ndarray | None = None,
    modality: str = "CT",
    patient_id: str = "SYNTHETIC001",
    patient_name: str = "Synthetic^Phantom",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "synthetic volume",
    study_description: str = "synthetic study",
    accession_number: str = "",
) -> list[Path]:
    """Write ``image`` as one DICOM series of single-frame images (one file per slice) in ``output_dir``.

    Args:
        image: a file MONAI's ``LoadImage`` reads (NIfTI, PNG, ...), or an array ``(X, Y[, Z])``.
        output_dir: new (or empty) folder for the series; it appears complete or not at all.
        affine: RAS affine of an array ``image`` (identity when left out); ignored for files (their own is used).
        modality: ``"CT"`` (values are HU) or ``"MR"``.
        patient_id, patient_name, study_instance_uid, series_instance_uid, series_number, series_description,
        study_description, accession_number: identifying attributes (UIDs are generated when left out).

    Returns:
        the written files, in slice order ``k = 0, 1, ...`` of the array (after the right-handed flip).

    Raises:
        DicomInputError: unreadable or multi-channel image, sheared affine, unknown modality, non-empty output.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    modality = modality.upper()
    if modality not in _STORAGE:
        raise DicomInputError(f"modality must be one of {sorted(_STORAGE)}, got {modality!r}")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DicomInputError(f"{out} exists and is not an empty folder: refusing to write a DICOM series there")
    array, affine, _ = _load(image, affine)
    geometry = series_geometry(affine, array.shape[2])
    if geometry["flip"]:
        array = array[:, :, ::-1]
        geometry = series_geometry(affine @ _flip_z(array.shape[2]), array.shape[2])
    stored, slope, intercept = _quantise(array, modality)

    now = datetime.datetime.now()
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_uid = generate_uid()
    normal = np.cross(geometry["orientation"][:3], geometry["orientation"][3:])
    files = []
    with build_dataset_atomically(out) as tmp:  # the series appears complete or not at all
        for k in range(stored.shape[2]):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = _STORAGE[modality]
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = _STORAGE[modality], sop_uid
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if modality == "CT" else "OTHER"]
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = accession_number, "", "1"
            ds.Modality, ds.Manufacturer = modality, "custom_components synthetic"
            ds.StudyDescription, ds.SeriesDescription = study_description, series_description
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.PositionReferenceIndicator, ds.PatientPosition, ds.Laterality = "", "HFS", ""
            ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, k + 1, 1
            ds.ImageOrientationPatient = [_ds(v) for v in geometry["orientation"]]
            ds.ImagePositionPatient = [_ds(float(v)) for v in geometry["positions"][k]]
            ds.SliceLocation = _ds(float(np.dot(normal, geometry["positions"][k])))
            ds.PixelSpacing = [_ds(v) for v in geometry["pixel_spacing"]]
            ds.SliceThickness = _ds(geometry["slice_spacing"])
            ds.SpacingBetweenSlices = _ds(geometry["slice_spacing"])
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[0])
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
            if modality == "CT":
                ds.RescaleType, ds.KVP = "HU", "120"
            else:
                ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "NONE", "", "2D"
                ds.EchoTrainLength = 1
                ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = "3.0", "1.5", "1.5"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            name = f"slice_{k:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            files.append(out / name)
    return files


def _flip_z(num_slices: int) -> np.ndarray:
    """Affine of reversing the third index: ``k -> num_slices - 1 - k``."""
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1.0, num_slices - 1.0
    return flip


def read_dicom_series(folder: str | os.PathLike) -> list:
    """The datasets (pydicom) of the one series in ``folder``, in the slice order ITK reads them (ascending position
    along ``row x column`` direction).

    Raises:
        DicomInputError: no DICOM files, more than one series, or images without plane geometry.
    """
    import pydicom

    path = Path(folder)
    if not path.is_dir():
        raise DicomInputError(f"DICOM series folder not found: {path}")
    datasets = []
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            datasets.append(pydicom.dcmread(f))
        except pydicom.errors.InvalidDicomError:
            continue
    if not datasets:
        raise DicomInputError(f"{path}: no DICOM files in it")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise DicomInputError(f"{path}: holds {len(series)} series ({sorted(series)}); give a folder of one series")
    if len(datasets) == 1:
        return datasets
    try:
        normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, dtype=float), (2, 3)))
        datasets.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))
    except AttributeError as e:
        raise DicomInputError(f"{path}: images without ImageOrientationPatient/ImagePositionPatient ({e})") from e
    return datasets

