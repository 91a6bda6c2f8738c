"""DICOM input and output: synthetic DICOM series (tests, demos) and DICOM Segmentation objects of predictions.

- :mod:`.series`: :func:`write_dicom_series` (a NIfTI/array volume as a CT or MR series, keeping its geometry),
  :func:`read_dicom_series` (a series folder's datasets in ITK's slice order);
- :mod:`.seg`: :func:`write_dicom_seg` (a label map as a DICOM SEG referencing its source series, one coded
  segment per label), :func:`segment_code` (standard SNOMED CT codes of label names),
  :func:`read_dicom_seg` (a SEG's label frames back, for checks), :func:`label_names_from_metadata`.

Needs ``pydicom`` and ``highdicom`` (imported when used).
"""

from .seg import label_names_from_metadata, read_dicom_seg, segment_code, write_dicom_seg
from .series import DicomInputError, read_dicom_series, series_geometry, write_dicom_series

__all__ = [
    "DicomInputError",
    "read_dicom_series",
    "series_geometry",
    "write_dicom_series",
    "label_names_from_metadata",
    "read_dicom_seg",
    "segment_code",
    "write_dicom_seg",
]
