"""Networks of the bundles: LeViT-UNet (:class:`LeViTUNet`) and UniverSeg (:class:`UniverSeg`), with their
checkpoint loaders."""

from .levit_unet import LeViTUNet, load_levit_imagenet, load_official_state_dict
from .universeg import CrossBlock, CrossConv2d, UniverSeg, load_universeg_state_dict

__all__ = [
    "LeViTUNet",
    "load_official_state_dict",
    "load_levit_imagenet",
    "CrossConv2d",
    "CrossBlock",
    "UniverSeg",
    "load_universeg_state_dict",
]
