"""Task-level augmentations of in-context segmentation episodes (MONAI dictionary transforms).

An episode is stacked as ``{"images": (1 + S, H, W), "labels": (1 + S, H, W)}`` (query first, then the support),
so one draw of a transform applies to the query and the whole support set alike. Besides MONAI's own spatial and
intensity transforms, task augmentation needs three that change *what the task is*:

- :class:`RandInvertIntensityd`: ``x -> 1 - x`` (min-max normalised images);
- :class:`RandInvertLabeld`: ``y -> 1 - y`` (segment the background instead);
- :class:`RandBoundaryLabeld`: replace each binary label by its boundary (a contour task).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandInvertIntensityd", "RandInvertLabeld", "RandBoundaryLabeld", "boundary_map"]


def boundary_map(label: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Inner boundary of binary maps ``(C, H, W)``: the foreground pixels within ``width`` of the background."""
    x = torch.as_tensor(label).float()
    k = 2 * int(width) + 1
    eroded = -F.max_pool2d(-x[:, None], k, stride=1, padding=width)[:, 0]
    return (x - eroded).clamp(0, 1)


class _RandEpisodeTransform(RandomizableTransform, MapTransform):
    def __init__(self, keys: KeysCollection, prob: float = 0.25, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self._apply(d[key])
        return d


class RandInvertIntensityd(_RandEpisodeTransform):
    """With probability ``prob``, ``x -> 1 - x`` on every key (images min-max normalised to [0, 1])."""

    def _apply(self, x):
        return 1.0 - x


class RandInvertLabeld(_RandEpisodeTransform):
    """With probability ``prob``, ``y -> 1 - y`` on every key (binary labels): the task becomes its complement."""

    def _apply(self, x):
        return 1.0 - x


class RandBoundaryLabeld(_RandEpisodeTransform):
    """With probability ``prob``, replace binary labels ``(C, H, W)`` by their inner boundary of ``width`` pixels.

    Args:
        keys: label keys.
        prob: probability.
        width: boundary width in pixels.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.25, width: int = 1, allow_missing_keys: bool = False):
        super().__init__(keys, prob, allow_missing_keys)
        self.width = int(width)

    def _apply(self, x):
        out = boundary_map(torch.as_tensor(x), self.width)
        return out.to(x.dtype) if isinstance(x, torch.Tensor) else out
