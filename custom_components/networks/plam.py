"""PLAM: the pixel-level attention module of LViT, as the official code computes it.

Li et al., "LViT: Language meets Vision Transformer in Medical Image Segmentation", IEEE TMI 2023,
https://arxiv.org/abs/2206.14718 (official repository HUANGLIZI/LViT). The paper describes a channel + spatial gate;
the released code applies a single spatial gate with no sigmoid, which is the default here:

- ``a = mean_c ReLU(Conv1x1_a(x))`` and ``m = max_c ReLU(Conv1x1_m(x))`` (both convolutions without bias), each
  ``[B, 1, H, W]``;
- ``s = cat[a, m, a + m]`` ``[B, 3, H, W]``; a per-pixel MLP ``Linear(3, 6) -> ReLU -> Linear(6, 1)`` gives the gate
  ``g`` ``[B, 1, H, W]`` (optionally squashed by a sigmoid, ``sigmoid=True``);
- the output is ``g * x``.

Parameters: ``2 C^2 + 31``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PLAM"]


class PLAM(nn.Module):
    """Pixel-level attention gate on a ``[B, C, H, W]`` feature map.

    Args:
        channels: ``C``.
        sigmoid: apply a sigmoid to the gate (paper figure); ``False`` (default) is the official code's unbounded gate.

    Shapes: ``x [B, C, H, W] -> [B, C, H, W]``; :meth:`gate` returns ``[B, 1, H, W]``.
    """

    def __init__(self, channels: int, sigmoid: bool = False) -> None:
        super().__init__()
        self.conv_avg = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.conv_max = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.mlp = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=True), nn.Linear(6, 1))
        self.sigmoid = bool(sigmoid)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gate ``g`` ``[B, 1, H, W]``."""
        # a 1x1 kernel ignores the dilation; 2 only steers single-threaded CPU PyTorch from its THNN 1x1 convolution
        # to oneDNN, about twice as fast from 256 channels on (and slower below)
        dilation = 2 if x.shape[1] >= 256 else 1
        a = torch.relu(F.conv2d(x, self.conv_avg.weight, None, 1, 0, dilation)).mean(dim=1, keepdim=True)
        m = torch.relu(F.conv2d(x, self.conv_max.weight, None, 1, 0, dilation)).amax(dim=1, keepdim=True)
        s = torch.cat([a, m, a + m], dim=1)  # [B, 3, H, W]
        g = self.mlp(s.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # per-pixel MLP
        if self.sigmoid:
            g = torch.sigmoid(g)
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x) * x
