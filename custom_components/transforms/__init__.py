"""MONAI-style transforms of the bundles: bidirectional copy-paste (BCP) and episode-level augmentation of
few-shot tasks (UniverSeg)."""

from .copy_paste import BidirectionalCopyPaste, box_mask, mix
from .fewshot import RandBoundaryLabeld, RandInvertIntensityd, RandInvertLabeld, boundary_map
from .voco import VoCoCropsd

__all__ = [
    "BidirectionalCopyPaste",
    "box_mask",
    "mix",
    "RandBoundaryLabeld",
    "RandInvertIntensityd",
    "RandInvertLabeld",
    "boundary_map",
    "VoCoCropsd",
]
