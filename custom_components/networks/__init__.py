"""Networks of the bundles: LeViT-UNet (:class:`LeViTUNet`) with its checkpoint loaders."""

from .levit_unet import LeViTUNet, load_levit_imagenet, load_official_state_dict

__all__ = ["LeViTUNet", "load_official_state_dict", "load_levit_imagenet"]
