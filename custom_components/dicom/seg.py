"""A bundle's prediction as a DICOM Segmentation (SEG) object that references its source series (highdicom).

The prediction is the label map the bundle's inference writes (``eval/predictions/<name>_seg.nii.gz``) for a
DICOM series input: same voxel grid as the series read with ITK. :func:`write_dicom_seg` matches every
slice of the label map to its source image by position (not by file order), checks the in-plane grid, and
writes a BINARY SEG with one segment per label:

- segment number = label value (labels without a name in between become ``label <v>``);
- segment label = the name of the label (:func:`label_names_from_metadata`: the bundle's ``metadata.json``
  ``outputs.pred.channel_def``, the inference config's ``class_names`` where it lists them, or an explicit
  ``"dicom": {"label_names": {...}}`` entry in ``metadata.json``);
- segmented property category/type = SNOMED CT codes of the anatomy (:func:`segment_code`; left/right as
  a type modifier), ``Tissue`` for names without a standard code;
- algorithm identification = the bundle's name and version (``AUTOMATIC`` segmentation).

Empty segments are left out of the frames (``omit_empty_frames``); an all-background prediction is written
with its empty frames so that the object is still valid and says "nothing found".
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .series import DicomInputError, read_dicom_series

__all__ = ["write_dicom_seg", "segment_code", "label_names_from_metadata", "read_dicom_seg", "SegmentCode"]


class SegmentCode(NamedTuple):
    """Codes of one segment (pydicom ``Code`` objects): its segmented property category and type, the type's
    laterality modifier (or None) and the anatomic region it lies in (or None)."""

    category: Any
    type: Any
    modifier: Any
    region: Any


def _codes():
    from pydicom.sr.codedict import codes

    return codes.SCT


def _dcm_codes():
    from pydicom.sr.codedict import codes

    return codes.DCM


# normalised label name -> (category attribute, type attribute, laterality attribute or None, region attribute)
_ANATOMY = {
    "liver": ("Organ", "Liver", None, None),
    "spleen": ("Organ", "Spleen", None, None),
    "kidney": ("Organ", "Kidney", None, None),
    "left_kidney": ("Organ", "Kidney", "Left", None),
    "right_kidney": ("Organ", "Kidney", "Right", None),
    "aorta": ("AnatomicalStructure", "Aorta", None, None),
    "pancreas": ("Organ", "Pancreas", None, None),
    "stomach": ("Organ", "Stomach", None, None),
    "gallbladder": ("Organ", "Gallbladder", None, None),
    "esophagus": ("Organ", "Esophagus", None, None),
    "oesophagus": ("Organ", "Esophagus", None, None),
    "inferior_vena_cava": ("AnatomicalStructure", "InferiorVenaCava", None, None),
    "ivc": ("AnatomicalStructure", "InferiorVenaCava", None, None),
    "portal_vein": ("AnatomicalStructure", "PortalVein", None, None),
    "portal_vein_and_splenic_vein": ("AnatomicalStructure", "PortalVein", None, None),
    "portal_and_splenic_vein": ("AnatomicalStructure", "PortalVein", None, None),
    "portal_and_splenic_veins": ("AnatomicalStructure", "PortalVein", None, None),
    "splenic_vein": ("AnatomicalStructure", "SplenicVein", None, None),
    "adrenal_gland": ("Organ", "AdrenalGland", None, None),
    "left_adrenal_gland": ("Organ", "AdrenalGland", "Left", None),
    "right_adrenal_gland": ("Organ", "AdrenalGland", "Right", None),
    "left_adrenal": ("Organ", "AdrenalGland", "Left", None),
    "right_adrenal": ("Organ", "AdrenalGland", "Right", None),
    "duodenum": ("Organ", "Duodenum", None, None),
    "bladder": ("Organ", "Bladder", None, None),
    "heart": ("Organ", "Heart", None, None),
    "lv": ("AnatomicalStructure", "LeftVentricle", None, None),
    "left_ventricle": ("AnatomicalStructure", "LeftVentricle", None, None),
    "rv": ("AnatomicalStructure", "RightVentricle", None, None),
    "right_ventricle": ("AnatomicalStructure", "RightVentricle", None, None),
    "myo": ("Tissue", "LeftVentricleMyocardium", None, None),
    "myocardium": ("Tissue", "LeftVentricleMyocardium", None, None),
    "left_ventricle_myocardium": ("Tissue", "LeftVentricleMyocardium", None, None),
    "la": ("AnatomicalStructure", "LeftAtrium", None, None),
    "left_atrium": ("AnatomicalStructure", "LeftAtrium", None, None),
    "lung": ("Organ", "Lung", None, None),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion", None, None),
    "infection": ("MorphologicallyAbnormalStructure", "Lesion", None, "Lung"),
    "lung_infection": ("MorphologicallyAbnormalStructure", "Lesion", None, "Lung"),
    "covid_19_infection": ("MorphologicallyAbnormalStructure", "Lesion", None, "Lung"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm", None, None),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm", None, None),
    "mass": ("MorphologicallyAbnormalStructure", "Mass", None, None),
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def segment_code(name: str) -> SegmentCode:
    """Standard codes (SNOMED CT, from pydicom's code dictionary) of a label name.

    Names are matched case- and punctuation-insensitively (``"Left Kidney"``, ``"left_kidney"``); a name without
    a standard code is coded as the generic ``Tissue`` (category and type).
    """
    sct = _codes()
    category, kind, side, region = _ANATOMY.get(_normalise(name), ("Tissue", "Tissue", None, None))
    return SegmentCode(getattr(sct, category), getattr(sct, kind), getattr(sct, side) if side else None,
                       getattr(sct, region) if region else None)


def label_names_from_metadata(metadata: str | os.PathLike | Mapping, class_names=None) -> dict[int, str]:
    """``{label value: name}`` of a bundle (background, 0, left out), from the first of:

    1. ``metadata.json``'s ``"dicom": {"label_names": {"1": "..."}}`` (an explicit choice for DICOM output);
    2. ``class_names``, the inference config's list of class names (index = label value) when it has one: it
       names what that config predicts (for example a variant config with other classes);
    3. ``network_data_format.outputs.pred.channel_def`` of ``metadata.json`` (file or loaded dict).
    """
    meta = json.loads(Path(metadata).read_text()) if not isinstance(metadata, Mapping) else metadata
    names = meta.get("dicom", {}).get("label_names")
    if names is None and isinstance(class_names, (list, tuple)) and all(isinstance(c, str) for c in class_names):
        names = dict(enumerate(class_names))
    if names is None:
        names = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    return {int(k): str(v) for k, v in names.items() if str(k).isdigit() and int(k) > 0}


def _load_prediction(prediction, affine) -> tuple[np.ndarray, np.ndarray, str]:
    """(integer label array (X, Y, Z), RAS affine, name) of a file (MONAI LoadImage) or an array."""
    if isinstance(prediction, (str, os.PathLike)):
        from monai.transforms import LoadImage

        path = Path(prediction)
        if not path.is_file():
            raise DicomInputError(f"prediction not found: {path}")
        img = LoadImage(image_only=True)(str(path))
        array, affine, name = np.asarray(img), np.asarray(img.affine, dtype=np.float64), str(path)
    else:
        array, name = np.asarray(prediction), "prediction array"
        if affine is None:
            raise DicomInputError("an array prediction needs its RAS affine (the one LoadImage gives for the series)")
        affine = np.asarray(affine, dtype=np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise DicomInputError(f"{name}: expected a 3D label map, got shape {array.shape}")
    if not np.allclose(array, np.round(array)) or array.min() < 0:
        raise DicomInputError(f"{name}: not a label map (values must be non-negative integers)")
    return np.round(array).astype(np.int64), affine, name


def _frames_in_source_order(labels: np.ndarray, affine: np.ndarray, datasets: list, name: str, source: str) -> np.ndarray:
    """``(len(datasets), rows, cols)`` label frames, frame ``n`` belonging to ``datasets[n]``; errors when the
    prediction grid is not the grid of the series."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if labels.shape != (cols, rows, len(datasets)):
        raise DicomInputError(
            f"{name}: shape {labels.shape} is not the grid of the series {source} "
            f"(columns x rows x slices = {(cols, rows, len(datasets))}); run inference on that series folder"
        )
    if len(datasets) == 1 and "ImagePositionPatient" not in datasets[0]:  # a projection image (DX, CR): no planes
        return labels[:, :, 0].T[None].astype(np.uint16)
    from monai.data.utils import orientation_ras_lps

    lps = orientation_ras_lps(affine)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    pixel_spacing = np.asarray(datasets[0].PixelSpacing, dtype=float)
    if (np.abs(lps[:3, 0] / spacing[0] - orientation[:3]).max() > 1e-3
            or np.abs(lps[:3, 1] / spacing[1] - orientation[3:]).max() > 1e-3
            or np.abs(spacing[:2] - pixel_spacing[::-1]).max() > 1e-3 * max(1.0, pixel_spacing.max())):
        raise DicomInputError(f"{name}: in-plane orientation/spacing differ from the series {source}")
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for ds in datasets])
    tolerance = 1e-2 * max(1.0, float(min(spacing)))
    frames = np.zeros((len(datasets), rows, cols), dtype=np.uint16)
    used = set()
    for k in range(labels.shape[2]):
        position = lps[:3, :3] @ np.array([0.0, 0.0, k]) + lps[:3, 3]
        distance = np.linalg.norm(positions - position, axis=1)
        n = int(np.argmin(distance))
        if distance[n] > tolerance or n in used:
            raise DicomInputError(f"{name}: slice {k} (position {position.round(3).tolist()}) matches no image of {source}")
        used.add(n)
        frames[n] = labels[:, :, k].T
    return frames


def write_dicom_seg(
    prediction: str | os.PathLike | np.ndarray,
    source_dir: str | os.PathLike,
    output_file: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    affine: np.ndarray | None = None,
    algorithm_name: str = "custom_components bundle",
    algorithm_version: str = "0.1.0",
    series_description: str = "AI segmentation",
    series_number: int = 300,
    manufacturer: str = "custom_components",
) -> Path:
    """Write ``prediction`` (a label map on the grid of the DICOM series in ``source_dir``) as a DICOM SEG file.

    Args:
        prediction: label-map file (the bundle's NIfTI output) or array ``(X, Y, Z)`` with ``affine`` (RAS).
        source_dir: the folder of the source series (the one inference read).
        output_file: the ``.dcm`` file to write (written to a temporary name, then renamed).
        label_names: ``{label value: name}`` (for example :func:`label_names_from_metadata`); labels without a
            name are called ``label <v>``.
        algorithm_name, algorithm_version: the bundle's name and version (Algorithm Identification).
        series_description, series_number, manufacturer: of the new SEG series.

    Returns:
        the written file.

    Raises:
        DicomInputError: unreadable prediction, or a grid that is not the source series' grid.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    labels, affine, name = _load_prediction(prediction, affine)
    datasets = read_dicom_series(source_dir)
    frames = _frames_in_source_order(labels, affine, datasets, name, str(source_dir))
    label_names = dict(label_names or {})
    num_segments = max([1, int(frames.max()), *label_names])
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64], family=_dcm_codes().ArtificialIntelligence, version=algorithm_version[:64]
    )
    descriptions = []
    for value in range(1, num_segments + 1):
        label = label_names.get(value, f"label {value}")
        category, kind, side, region = segment_code(label)
        description = hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=label[:64],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[region] if region is not None else None,
        )
        if side is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(side.value, side.scheme_designator, side.meaning)
            ]
        descriptions.append(description)
    pixel_measures = None
    if len(datasets) == 1 and "ImagePositionPatient" not in datasets[0]:  # a projection image: no plane geometry,
        source = datasets[0]  # so give the frame its pixel size (detector spacing where there is no PixelSpacing)
        spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or [1.0, 1.0]
        pixel_measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in spacing],
                                                  slice_thickness=float(source.get("SliceThickness") or 1.0))
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_measures=pixel_measures,
        pixel_array=frames,  # a label map: value = segment number
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=manufacturer,
        manufacturer_model_name=algorithm_name[:64],
        software_versions=algorithm_version[:64],
        device_serial_number="0",
        series_description=series_description[:64],
        omit_empty_frames=bool(frames.any()),
    )
    if pixel_measures is not None:  # General Image: required (maybe empty) where there is no plane orientation
        seg.PatientOrientation = datasets[0].get("PatientOrientation", "")
    out = Path(output_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        seg.save_as(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_dicom_seg(seg_file: str | os.PathLike, source_dir: str | os.PathLike) -> np.ndarray:
    """The label map ``(rows, cols)`` per source image of a SEG (segment numbers as values), ``(N, rows, cols)``
    in the slice order of :func:`~.series.read_dicom_series` (for checks: compare with the prediction's
    ``labels[:, :, k].T`` after matching positions)."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_file))
    uids = [str(ds.SOPInstanceUID) for ds in read_dicom_series(source_dir)]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    present = [u for u in uids if u in referenced]
    out = np.zeros((len(uids), int(seg.Rows), int(seg.Columns)), dtype=np.int64)
    if present:
        pixels = seg.get_pixels_by_source_instance(present, combine_segments=True, skip_overlap_checks=True,
                                                   assert_missing_frames_are_empty=True)
        for uid, frame in zip(present, pixels):
            out[uids.index(uid)] = frame
    return out
