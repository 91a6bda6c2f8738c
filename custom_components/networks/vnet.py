"""The 3D V-Net of the BCP left-atrium (LA) experiments (the UA-MT V-Net), with the official state-dict key names.

Plain (non-residual) conv stages of 1, 2, 3, 3, 3 Conv3x3x3-Norm-ReLU at widths n, 2n, 4n, 8n, 16n; stride-2
Conv(k=2) down-sampling; stride-2 ConvTranspose(k=2) up-sampling whose output is *added* to the encoder feature of
the same scale; decoder stages of 3, 3, 2, 1 convs; Dropout3d(0.5) on the bottleneck and before the 1x1x1 output
convolution. With ``n_filters=16``, batch norm and 2 classes it has 9,448,866 parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["VNet"]


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batchnorm":
        return [nn.BatchNorm3d(channels)]
    if kind == "instancenorm":
        return [nn.InstanceNorm3d(channels)]
    if kind == "groupnorm":
        return [nn.GroupNorm(num_groups=16, num_channels=channels)]
    if kind == "none":
        return []
    raise ValueError(f"normalization must be batchnorm, instancenorm, groupnorm or none, got {kind!r}")


class ConvStage(nn.Module):
    """``n_stages`` x [Conv3x3x3(pad 1) -> norm -> ReLU] (keys ``conv.*``)."""

    def __init__(self, n_stages: int, in_channels: int, out_channels: int, normalization: str = "batchnorm") -> None:
        super().__init__()
        ops: list[nn.Module] = []
        for i in range(n_stages):
            ops.append(nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1))
            ops += _norm(normalization, out_channels)
            ops.append(nn.ReLU(inplace=True))
        self.conv = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownConv(nn.Module):
    """Conv(k=2, stride 2) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, normalization: str = "batchnorm") -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 2, stride=2), *_norm(normalization, out_channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpConv(nn.Module):
    """ConvTranspose(k=2, stride 2) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, normalization: str = "batchnorm") -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2),
            *_norm(normalization, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class VNetEncoder(nn.Module):
    def __init__(self, in_channels: int, n: int, normalization: str, has_dropout: bool) -> None:
        super().__init__()
        self.block_one = ConvStage(1, in_channels, n, normalization)
        self.block_one_dw = DownConv(n, 2 * n, normalization)
        self.block_two = ConvStage(2, 2 * n, 2 * n, normalization)
        self.block_two_dw = DownConv(2 * n, 4 * n, normalization)
        self.block_three = ConvStage(3, 4 * n, 4 * n, normalization)
        self.block_three_dw = DownConv(4 * n, 8 * n, normalization)
        self.block_four = ConvStage(3, 8 * n, 8 * n, normalization)
        self.block_four_dw = DownConv(8 * n, 16 * n, normalization)
        self.block_five = ConvStage(3, 16 * n, 16 * n, normalization)
        self.dropout = nn.Dropout3d(p=0.5, inplace=False) if has_dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
        return [x1, x2, x3, x4, x5]


class VNetDecoder(nn.Module):
    def __init__(self, n: int, out_channels: int, normalization: str, has_dropout: bool) -> None:
        super().__init__()
        self.block_five_up = UpConv(16 * n, 8 * n, normalization)
        self.block_six = ConvStage(3, 8 * n, 8 * n, normalization)
        self.block_six_up = UpConv(8 * n, 4 * n, normalization)
        self.block_seven = ConvStage(3, 4 * n, 4 * n, normalization)
        self.block_seven_up = UpConv(4 * n, 2 * n, normalization)
        self.block_eight = ConvStage(2, 2 * n, 2 * n, normalization)
        self.block_eight_up = UpConv(2 * n, n, normalization)
        self.block_nine = ConvStage(1, n, n, normalization)
        self.out_conv = nn.Conv3d(n, out_channels, 1)
        self.dropout = nn.Dropout3d(p=0.5, inplace=False) if has_dropout else nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.block_six(self.block_five_up(feats[4]) + feats[3])
        x = self.block_seven(self.block_six_up(x) + feats[2])
        x = self.block_eight(self.block_seven_up(x) + feats[1])
        x = self.block_nine(self.block_eight_up(x) + feats[0])
        return self.out_conv(self.dropout(x))


class VNet(nn.Module):
    """3D V-Net of the BCP/UA-MT left-atrium experiments.

    Args:
        n_channels: input channels.
        n_classes: output classes (2 for LA: background, atrium).
        n_filters: width of the first stage (16 official; smaller for CPU runs).
        normalization: ``"batchnorm"`` (LA), ``"instancenorm"`` (no affine, Pancreas), ``"groupnorm"`` or ``"none"``.
        has_dropout: Dropout3d(0.5) on the bottleneck and before the output convolution (active in train mode).

    Input ``[B, n_channels, H, W, D]`` with each side a multiple of 16; output logits ``[B, n_classes, H, W, D]``
    (the official forward also returns features; this one returns the logits only).
    """

    def __init__(
        self,
        n_channels: int = 1,
        n_classes: int = 2,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        has_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = VNetEncoder(n_channels, n_filters, normalization, has_dropout)
        self.decoder = VNetDecoder(n_filters, n_classes, normalization, has_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
