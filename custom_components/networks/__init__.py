"""Networks of the bundles: LeViT-UNet (:class:`LeViTUNet`), UniverSeg (:class:`UniverSeg`), and the BCP backbones
(:class:`UNet2D`, :class:`VNet`), with their checkpoint loaders."""

from .bcp_unet import UNet2D, load_official_unet
from .levit_unet import LeViTUNet, load_levit_imagenet, load_official_state_dict
from .universeg import CrossBlock, CrossConv2d, UniverSeg, load_universeg_state_dict
from .vnet import VNet
from .lvit import LViT
from .plam import PLAM
from .voco import VoCoEncoder, VoCoHead, VoCoNet, load_voco_checkpoint, save_voco_backbone

__all__ = [
    "LeViTUNet",
    "load_official_state_dict",
    "load_levit_imagenet",
    "CrossConv2d",
    "CrossBlock",
    "UniverSeg",
    "load_universeg_state_dict",
    "UNet2D",
    "load_official_unet",
    "VNet",
    "LViT",
    "PLAM",
    "VoCoEncoder",
    "VoCoHead",
    "VoCoNet",
    "load_voco_checkpoint",
    "save_voco_backbone",
]
