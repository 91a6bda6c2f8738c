"""MONAI-style transforms of the bundles: the ``augment`` switch of a training pipeline (:func:`with_augmentation`),
bidirectional copy-paste (BCP), episode-level augmentation of few-shot tasks (UniverSeg), VoCo crops, the check of
every loaded input image (:class:`CheckImaged`), and the intensity normalisation every bundle selects with its
``intensity`` key (:class:`IntensityNormalised`, with the record of it next to trained weights: :mod:`.intensity`)."""

from .augmentation import AUGMENTATIONS, with_augmentation
from .checks import CheckImaged
from .copy_paste import BidirectionalCopyPaste, box_mask, mix
from .fewshot import RandBoundaryLabeld, RandInvertIntensityd, RandInvertLabeld, boundary_map
from .intensity import (
    IntensityMismatchError,
    IntensityNormalised,
    IntensityRecordHandler,
    check_model_intensity,
    intensity_spec,
    intensity_transform,
    write_intensity_record,
)
from .voco import VoCoCropsd

__all__ = [
    "AUGMENTATIONS",
    "with_augmentation",
    "CheckImaged",
    "BidirectionalCopyPaste",
    "box_mask",
    "mix",
    "RandBoundaryLabeld",
    "RandInvertIntensityd",
    "RandInvertLabeld",
    "boundary_map",
    "VoCoCropsd",
    "IntensityNormalised",
    "IntensityMismatchError",
    "IntensityRecordHandler",
    "check_model_intensity",
    "intensity_spec",
    "intensity_transform",
    "write_intensity_record",
]
