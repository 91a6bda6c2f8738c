"""The 2D U-Net of the BCP ACDC experiments (the SSL4MIS/PyMIC U-Net), with the official state-dict key names.

Widths 16-32-64-128-256, LeakyReLU(0.01), element-wise dropout 0.05/0.1/0.2/0.3/0.5 in the encoder only, a 1x1
convolution before each bilinear up-sampling and a 3x3 output convolution. With the default arguments the forward
path has 1,813,764 parameters, as the official model (whose extra contrastive heads, unused by BCP, are not built;
:func:`load_official_unet` drops their keys).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = ["UNet2D", "load_official_unet"]


class ConvBlock(nn.Module):
    """Conv3x3 -> BN -> LeakyReLU -> Dropout -> Conv3x3 -> BN -> LeakyReLU (keys ``conv_conv.{0,1,4,5}``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.conv_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(negative_slope),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(negative_slope),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class DownBlock(nn.Module):
    """MaxPool2 then :class:`ConvBlock` (keys ``maxpool_conv.1.*``)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class UpBlock(nn.Module):
    """Conv1x1(deep) -> bilinear x2 (align_corners) -> concat[skip, up] -> :class:`ConvBlock` without dropout."""

    def __init__(self, deep_channels: int, skip_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(deep_channels, skip_channels, kernel_size=1)
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            self.up = nn.ConvTranspose2d(skip_channels, skip_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(2 * skip_channels, skip_channels, 0.0)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(self.conv1x1(deep))
        return self.conv(torch.cat([skip, up], dim=1))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, features: Sequence[int], dropout: Sequence[float]) -> None:
        super().__init__()
        f, p = list(features), list(dropout)
        self.in_conv = ConvBlock(in_channels, f[0], p[0])
        self.down1 = DownBlock(f[0], f[1], p[1])
        self.down2 = DownBlock(f[1], f[2], p[2])
        self.down3 = DownBlock(f[2], f[3], p[3])
        self.down4 = DownBlock(f[3], f[4], p[4])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.in_conv(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        x4 = self.down4(x3)
        return [x0, x1, x2, x3, x4]


class Decoder(nn.Module):
    def __init__(self, features: Sequence[int], out_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        f = list(features)
        self.up1 = UpBlock(f[4], f[3], bilinear)
        self.up2 = UpBlock(f[3], f[2], bilinear)
        self.up3 = UpBlock(f[2], f[1], bilinear)
        self.up4 = UpBlock(f[1], f[0], bilinear)
        self.out_conv = nn.Conv2d(f[0], out_channels, kernel_size=3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.up1(feats[4], feats[3])
        x = self.up2(x, feats[2])
        x = self.up3(x, feats[1])
        x = self.up4(x, feats[0])
        return self.out_conv(x)


class UNet2D(nn.Module):
    """2D U-Net of the BCP/SSL4MIS ACDC experiments.

    Args:
        in_channels: input channels (1 for cine MRI).
        out_channels: classes (4 for ACDC: background, RV, Myo, LV).
        features: the five encoder widths (default ``(16, 32, 64, 128, 256)``).
        dropout: element-wise dropout of the five encoder blocks (default ``(0.05, 0.1, 0.2, 0.3, 0.5)``).
        bilinear: bilinear up-sampling (official); ``False`` uses transposed convolutions.

    Input ``[B, in_channels, H, W]`` with H and W multiples of 16; output logits ``[B, out_channels, H, W]``.

    Example::

        net = UNet2D(1, 4)
        logits = net(torch.rand(2, 1, 256, 256))  # [2, 4, 256, 256]
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 4,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        bilinear: bool = True,
    ) -> None:
        super().__init__()
        if len(features) != 5 or len(dropout) != 5:
            raise ValueError(f"features and dropout need 5 values each, got {features} and {dropout}")
        self.encoder = Encoder(in_channels, features, dropout)
        self.decoder = Decoder(features, out_channels, bilinear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def load_official_unet(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an official BCP/SSL4MIS U-Net checkpoint (a state dict, possibly under ``state_dict``/``model``) from a
    local file, dropping the unused ``projection_head``/``prediction_head``/``contrastive_class_selector*`` keys.
    Nothing is downloaded."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "net"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, "module.")
    unused = ("projection_head", "prediction_head", "contrastive_class_selector")
    state = {k: v for k, v in state.items() if not k.startswith(unused)}
    # strict load_state_dict, not copy_model_state: that one silently skips missing or mis-shaped keys
    network.load_state_dict(state, strict=True)
    return network
