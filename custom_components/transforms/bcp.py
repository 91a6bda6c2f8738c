"""Data transforms of the BCP bundle's training pipelines (the official BCP augmentation and 2D slice sampling).

- :class:`RandRotFlipd`: the official ``random_rot_flip`` of BCP/SSL4MIS/UA-MT: a rot90 by ``k`` drawn uniformly in
  ``{0, 1, 2, 3}`` in the plane of two spatial axes, then **exactly one** flip along one of those axes drawn
  uniformly. (MONAI's ``RandRotate90d`` draws ``k`` in ``1..max_k`` when it applies, and two independent
  ``RandFlipd`` flip zero, one or two axes: another distribution.) The official LA pipeline applies it to every
  volume; the official ACDC pipeline applies it with probability 0.5 and otherwise, with probability 0.5, a random
  rotation of ±20° (a MONAI ``OneOf`` in ``train.json``).
- :class:`SelectSliced`: keeps one slice of a volume, whose index is stored in the data item (``"slice"``), so that
  a datalist of ``(volume, slice)`` items (:func:`custom_components.data.acdc.slice_items`) yields independent 2D
  slices, as the official ACDC slice list does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Flip, MapTransform, RandomizableTransform, Rotate90

__all__ = ["RandRotFlipd", "SelectSliced"]


class RandRotFlipd(RandomizableTransform, MapTransform):
    """With probability ``prob``: rot90 by ``k ~ U{0..3}`` in the plane of ``spatial_axes``, then one flip along an
    axis drawn uniformly from ``spatial_axes`` (the same ``k`` and axis for every key).

    Args:
        keys: keys of the channel-first images/labels to transform.
        prob: probability of applying the transform (official LA: 1.0; ACDC: see the module docstring).
        spatial_axes: the two spatial axes (channel excluded) of the rotation plane and of the flip (official:
            ``(0, 1)``, the first two axes of ``np.rot90``/``np.flip`` on a channel-less array).
        allow_missing_keys: do not raise for a missing key.
    """

    def __init__(
        self, keys: KeysCollection, prob: float = 1.0, spatial_axes: Sequence[int] = (0, 1),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(spatial_axes) != 2:
            raise ValueError(f"spatial_axes must be two axes, got {spatial_axes}")
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        self._k = 0
        self._flip_axis = self.spatial_axes[0]

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._k = int(self.R.randint(0, 4))
        self._flip_axis = self.spatial_axes[int(self.R.randint(0, 2))]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        rotate, flip = Rotate90(self._k, self.spatial_axes), Flip(self._flip_axis)
        for key in self.key_iterator(d):
            d[key] = flip(rotate(d[key]))
        return d


class SelectSliced(MapTransform):
    """Replace each channel-first volume ``[C, *spatial]`` by its slice ``index`` along spatial axis ``axis`` (that
    axis removed); the index is ``data[index_key]``. The slice is a copy, so a cached slice does not keep its volume
    in memory.

    Args:
        keys: keys of the volumes.
        index_key: key of the slice index in the data item (:func:`custom_components.data.acdc.slice_items`).
        axis: spatial axis of the slices (channel excluded; ``-1``: the last, the short axis of cine-MRI stacks).
        allow_missing_keys: do not raise for a missing key.
    """

    def __init__(self, keys: KeysCollection, index_key: str = "slice", axis: int = -1,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.index_key, self.axis = index_key, int(axis)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        index = int(d[self.index_key])
        for key in self.key_iterator(d):
            img = d[key]
            spatial = img.ndim - 1
            axis = (self.axis % spatial) + 1
            if not -img.shape[axis] <= index < img.shape[axis]:
                raise IndexError(f"slice {index} of {key!r} out of range: shape {tuple(img.shape)}, axis {axis}")
            if isinstance(img, torch.Tensor):
                d[key] = img.select(axis, index).clone()
            else:
                d[key] = np.take(np.asarray(img), index, axis=axis).copy()
        return d
