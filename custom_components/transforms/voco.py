"""VoCo pre-training sample: base crops on an n x n grid, random crops and their position labels.

Paper: Wu, Zhuang, Chen, "VoCo", CVPR 2024 (arXiv 2402.17300); geometry of the official "10k" code.

The volume (channel first, after windowing, foreground crop and resizing to ``(n * roi, n * roi, Z)``) is cut into
``K = n * n`` **base crops** ``[i*roi, (i+1)*roi) x [j*roi, (j+1)*roi) x [0, Z)`` (index ``k = n * i + j``, ``i`` along
the first spatial axis); they tile the volume exactly. Each of the ``num_random`` **random crops** is an ``roi x roi x
Z`` box whose centre ``(cx, cy)`` is drawn uniformly from the integers ``roi/2 .. n*roi - roi/2 - 1``. Its **position
label** ``y_k = area(crop square ∩ cell k) / roi^2``: it sums to 1 and has at most 4 non-zeros. Labels are computed
before augmentation. Every crop is then resized to ``spatial_size`` (what the network sees) and augmented
independently (RandFlip on each axis, RandRotate90 in the first two axes, RandShiftIntensity).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, RandFlip, Randomizable, RandRotate90, RandShiftIntensity, Resize

__all__ = ["base_crop_boxes", "position_labels", "VoCoCropsd"]


def base_crop_boxes(grid: int, roi: int) -> list[tuple[int, int, int, int]]:
    """``(x0, x1, y0, y1)`` of the ``grid * grid`` base cells, in index order ``k = grid * i + j``."""
    return [(i * roi, (i + 1) * roi, j * roi, (j + 1) * roi) for i in range(grid) for j in range(grid)]


def position_labels(centres: np.ndarray | Sequence[Sequence[int]], grid: int, roi: int) -> np.ndarray:
    """Overlap fractions ``(N, grid*grid)`` of the ``roi x roi`` squares centred at ``centres`` ``(N, 2)`` with the
    base cells."""
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 2)
    half = roi // 2
    labels = np.zeros((len(centres), grid * grid), dtype=np.float32)
    for n, (cx, cy) in enumerate(centres):
        for k, (x0, x1, y0, y1) in enumerate(base_crop_boxes(grid, roi)):
            ox = max(0, min(cx + half, x1) - max(cx - half, x0))
            oy = max(0, min(cy + half, y1) - max(cy - half, y0))
            labels[n, k] = ox * oy / float(roi * roi)
    return labels


class VoCoCropsd(Randomizable, MapTransform):
    """Turn one volume into the VoCo crops and labels.

    Args:
        keys: the image key (one).
        grid: n, the base grid is n x n (VoCo: 4).
        roi: side of a base cell / random crop in the first two axes, in voxels of the input (VoCo: 96); the input must
            be ``(C, grid * roi, grid * roi, Z)``.
        spatial_size: size every crop is resized to (VoCo: 64, i.e. 64³); ``None`` keeps ``(roi, roi, Z)``.
        num_random: random crops per volume (VoCo ``sw_batch_size``: 2).
        flip_prob, rotate_prob, shift_prob, shift_offset: augmentation of each crop (VoCo: 0.2, 0.2, 0.1, 0.1).
        crops_key, labels_key: output keys; ``crops_key`` holds ``(num_random + grid², C, *spatial_size)``: the random
            crops first, then the base crops in index order; ``labels_key`` holds ``(num_random, grid²)``.

    The input key is replaced by the crops (``crops_key`` defaults to the image key).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        grid: int = 4,
        roi: int = 96,
        spatial_size: int | Sequence[int] | None = 64,
        num_random: int = 2,
        flip_prob: float = 0.2,
        rotate_prob: float = 0.2,
        shift_prob: float = 0.1,
        shift_offset: float = 0.1,
        crops_key: str | None = None,
        labels_key: str = "position",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"VoCoCropsd takes one image key, got {self.keys}")
        if grid < 1 or roi < 2 or roi % 2 or num_random < 1:
            raise ValueError(f"need grid >= 1, an even roi >= 2 and num_random >= 1; got {grid}, {roi}, {num_random}")
        self.grid, self.roi, self.num_random = int(grid), int(roi), int(num_random)
        self.spatial_size = spatial_size
        self.crops_key = crops_key or self.keys[0]
        self.labels_key = labels_key
        self.augment = Compose([
            RandFlip(prob=flip_prob, spatial_axis=0),
            RandFlip(prob=flip_prob, spatial_axis=1),
            RandFlip(prob=flip_prob, spatial_axis=2),
            RandRotate90(prob=rotate_prob, max_k=3, spatial_axes=(0, 1)),
            RandShiftIntensity(offsets=shift_offset, prob=shift_prob),
        ])
        self._centres = np.zeros((self.num_random, 2), dtype=np.int64)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> VoCoCropsd:
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        half, side = self.roi // 2, self.grid * self.roi
        self._centres = self.R.randint(half, side - half, size=(self.num_random, 2))

    def _resize(self, crop: torch.Tensor) -> torch.Tensor:
        if self.spatial_size is None:
            return crop
        size = tuple(int(s) for s in np.broadcast_to(np.asarray(self.spatial_size), (crop.ndim - 1,)))
        if tuple(crop.shape[1:]) == size:
            return crop
        # "bilinear" is trilinear on a 3D crop; a plain tensor again, so the augmentations see what they saw before
        resized = Resize(size, mode="bilinear", align_corners=True, dtype=torch.float32)(crop)
        return torch.as_tensor(resized).as_subclass(torch.Tensor)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        key = self.keys[0]
        img = torch.as_tensor(d[key]).as_subclass(torch.Tensor).float()
        side = self.grid * self.roi
        if img.ndim < 3 or tuple(img.shape[1:3]) != (side, side):
            raise ValueError(
                f"VoCoCropsd expects a channel-first volume of size ({side}, {side}, Z) (grid {self.grid} x roi "
                f"{self.roi}); got shape {tuple(img.shape)}: resize the volume first"
            )
        self.randomize()
        half = self.roi // 2
        boxes = [(cx - half, cx + half, cy - half, cy + half) for cx, cy in self._centres]
        boxes += base_crop_boxes(self.grid, self.roi)
        crops = []
        for x0, x1, y0, y1 in boxes:
            crop = self._resize(img[:, x0:x1, y0:y1])
            crops.append(torch.as_tensor(self.augment(crop)).as_subclass(torch.Tensor))
        d[self.crops_key] = torch.stack(crops)
        d[self.labels_key] = torch.from_numpy(position_labels(self._centres, self.grid, self.roi))
        return d
