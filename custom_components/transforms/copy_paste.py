"""Bidirectional copy-paste (BCP) mixing: the zero-centred box mask and the two mixed images of a batch.

The mask ``M`` is all ones with one zero box whose side is ``floor(ratio * side)`` along every spatial axis, at a
uniformly random position; one box is drawn per call and shared by the whole batch. ``mix(A, B, M) = A*M + B*(1-M)``
keeps ``A`` around the box (the *surround*) and pastes ``B`` inside it. Per BCP iteration (labeled halves ``La, Lb``,
unlabeled halves ``Ua, Ub``):

- ``X_in  = mix(La, Ua)``: labeled surround, unlabeled box;
- ``X_out = mix(Ub, Lb)``: unlabeled surround, labeled box.

The box is computed from the actual patch size (any 2D or 3D shape), not from hard-coded sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["box_mask", "mix", "BidirectionalCopyPaste"]


def box_mask(
    spatial_shape: Sequence[int],
    ratio: float = 2.0 / 3.0,
    rng: np.random.Generator | None = None,
    device: torch.device | str | None = None,
    start: Sequence[int] | None = None,
) -> torch.Tensor:
    """Ones with one zero box of side ``floor(ratio * side)`` per axis.

    Args:
        spatial_shape: patch size (2 or 3 values).
        ratio: box side relative to the patch side (BCP: 2/3).
        rng: source of the box position (uniform over every position that fits); default a fresh generator.
        device: device of the returned tensor.
        start: explicit box corner (for tests); overrides ``rng``.

    Returns:
        float32 tensor of ``spatial_shape``: 1 outside the box, 0 inside.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    shape = [int(s) for s in spatial_shape]
    sizes = [int(np.floor(ratio * s)) for s in shape]
    if start is None:
        rng = rng if rng is not None else np.random.default_rng()
        start = [int(rng.integers(0, s - b + 1)) for s, b in zip(shape, sizes)]
    mask = torch.ones(shape, dtype=torch.float32, device=device)
    mask[tuple(slice(int(a), int(a) + b) for a, b in zip(start, sizes))] = 0.0
    return mask


def mix(surround: torch.Tensor, box: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``surround * M + box * (1 - M)`` for batched ``[B, C, *spatial]`` (or ``[B, *spatial]``) tensors; ``mask`` has
    the spatial shape only and is broadcast. Works for images, one-hot targets and integer label maps (the result
    keeps the dtype of ``surround``)."""
    m = mask.to(surround.device)
    out = surround.float() * m + box.float() * (1.0 - m)
    return out.to(surround.dtype)


class BidirectionalCopyPaste:
    """Draw one box per call and build ``X_in = mix(La, Ua)`` and ``X_out = mix(Ub, Lb)`` (images and targets).

    Args:
        ratio: box side relative to the patch side (``mask_ratio``, BCP: 2/3).
        seed: seed of the box positions (``None``: nondeterministic).

    Example::

        bcp = BidirectionalCopyPaste(ratio=2 / 3, seed=0)
        out = bcp(la, lb, ua, ub, ya, yb, pa, pb)  # pa/pb: pseudo labels of ua/ub
        out["image_in"], out["image_out"], out["label_in"], out["label_out"], out["mask"]
    """

    def __init__(self, ratio: float = 2.0 / 3.0, seed: int | None = None) -> None:
        self.ratio = float(ratio)
        self.rng = np.random.default_rng(seed)

    def mask(self, spatial_shape: Sequence[int], device=None) -> torch.Tensor:
        """A new box mask for this patch size."""
        return box_mask(spatial_shape, self.ratio, self.rng, device)

    def __call__(
        self,
        la: torch.Tensor,
        lb: torch.Tensor,
        ua: torch.Tensor,
        ub: torch.Tensor,
        ya: torch.Tensor | None = None,
        yb: torch.Tensor | None = None,
        pa: torch.Tensor | None = None,
        pb: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        m = self.mask(la.shape[2:], la.device)
        out = {"mask": m, "image_in": mix(la, ua, m), "image_out": mix(ub, lb, m)}
        if ya is not None and pa is not None:
            out["label_in"] = mix(ya, pa, m)
        if yb is not None and pb is not None:
            out["label_out"] = mix(pb, yb, m)
        return out
