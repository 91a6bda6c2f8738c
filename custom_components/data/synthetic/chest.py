"""Chest-X-ray-like 2D phantom with infected areas in named lung zones (for the LViT / QaTa-COV19-like task).

:class:`ChestXRayPhantom` renders a frontal (PA) radiograph-like image in ``[0, 1]`` (bright = attenuating):
a body outline, two dark lung fields, a bright mediastinum and heart, the diaphragm domes, rib-like curved bands
across the lungs, a smooth exposure bias and noise. Infected areas are blurry ground-glass opacities placed in the
six zones ``{upper, middle, lower} x {left, right}``, clipped to the lung; the mask is their union.

Conventions: array axis 0 runs from the head (row 0) to the feet, axis 1 across the image; the image is seen as a
radiologist reads it, so the patient's **right** lung lies on the image's **left** (columns < centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .noise import add_gaussian_noise, apply_bias_field, smooth_random_field
from .shapes import Ellipsoid, Grid, deform

__all__ = ["ChestXRayPhantom", "LUNG_ZONES"]

#: the named zones of the report sentences: (height, side)
LUNG_ZONES = tuple((h, s) for s in ("left", "right") for h in ("upper", "middle", "lower"))


@dataclass
class ChestXRayPhantom:
    """Random chest radiographs with lesion masks.

    Args:
        size: image side (pixels); the field of view is the unit square ``[-1, 1]^2``.
        max_lesions: lesions per image are drawn uniformly from ``0..max_lesions`` (a zone holds at most one).
        noise_std: Gaussian noise standard deviation.
        max_decoys: up to this many non-infectious opacities that look like lesions are added in zones without
            infection and are **not** in the mask (0 by default). With decoys the image alone cannot tell infection
            from decoy; the report sentence (which names the infected zones) can.
    """

    size: int = 224
    max_lesions: int = 4
    noise_std: float = 0.03
    max_decoys: int = 0

    def lung_shapes(self, rng: np.random.Generator) -> dict[str, object]:
        """The two lung fields (image-left = patient's right), slightly deformed and asymmetric."""
        out = {}
        for side, cx in (("right", -0.42), ("left", 0.42)):
            cy = -0.05 + rng.uniform(-0.04, 0.04)
            rx = (0.26 if side == "right" else 0.23) * rng.uniform(0.92, 1.08)
            ry = 0.58 * rng.uniform(0.92, 1.06)
            base = Ellipsoid((cy, cx + rng.uniform(-0.03, 0.03)), (ry, rx), rotation=rng.uniform(-0.08, 0.08))
            out[side] = deform(base, rng, amplitude=0.06, wavelength=0.8)
        return out

    @staticmethod
    def zone_box(lung_mask: np.ndarray, height: str) -> tuple[int, int]:
        """Rows ``[top, bottom)`` of the upper/middle/lower third of a lung mask."""
        rows = np.flatnonzero(lung_mask.any(axis=1))
        top, bottom = int(rows[0]), int(rows[-1]) + 1
        third = (bottom - top) / 3.0
        i = ("upper", "middle", "lower").index(height)
        return int(top + i * third), int(top + (i + 1) * third)

    def __call__(self, rng: np.random.Generator, zones: list[tuple[str, str]] | None = None):
        """One case: ``(image float32 [size, size] in [0, 1], mask uint8 {0, 1}, zones)``.

        Args:
            rng: random generator (the only source of randomness).
            zones: the infected zones ``(height, side)``; default: a random number of distinct random zones.
        """
        n = self.size
        grid = Grid((n, n), spacing=2.0 / n)
        yy, xx = grid.coords()
        lungs = self.lung_shapes(rng)
        lung_masks = {side: grid.mask(shape) for side, shape in lungs.items()}
        lung = lung_masks["left"] | lung_masks["right"]

        # body, mediastinum, heart, diaphragm
        body = grid.mask(Ellipsoid((0.05, 0.0), (1.1, 0.9 * rng.uniform(0.95, 1.05))))
        image = np.where(body, 0.62, 0.06).astype(np.float32)
        image[lung] = 0.22
        heart = grid.mask(Ellipsoid((0.25, 0.1 + rng.uniform(-0.03, 0.03)), (0.28, 0.26 * rng.uniform(0.9, 1.1))))
        image[heart & body] = np.maximum(image[heart & body], 0.7)
        below = yy > (0.5 + 0.08 * np.cos(3.0 * xx))  # diaphragm domes
        image[below & body] = 0.68
        lung = lung & ~heart & ~below
        for side in lung_masks:
            lung_masks[side] &= lung

        # rib-like bands: curved arcs descending laterally, across both lungs
        ribs = np.zeros((n, n), np.float32)
        offset = rng.uniform(-0.05, 0.05)
        for k in range(9):
            y0 = -0.62 + 0.14 * k + offset
            curve = y0 + 0.35 * xx**2
            ribs += np.exp(-(((yy - curve) / 0.022) ** 2)).astype(np.float32)
        image += 0.12 * np.clip(ribs, 0, 1) * body

        # lesions: blurry ground-glass opacities in named zones, clipped to the lung
        if zones is None:
            k = int(rng.integers(0, self.max_lesions + 1))
            chosen = rng.choice(len(LUNG_ZONES), size=k, replace=False) if k else []
            zones = [LUNG_ZONES[i] for i in sorted(chosen)]
        mask = np.zeros((n, n), bool)
        decoy = np.zeros((n, n), bool)
        free = [z for z in LUNG_ZONES if z not in zones]
        n_decoys = int(rng.integers(0, self.max_decoys + 1)) if self.max_decoys > 0 and free else 0
        decoys = [free[i] for i in rng.choice(len(free), size=min(n_decoys, len(free)), replace=False)] if n_decoys else []
        for k, (height, side) in enumerate(list(zones) + decoys):
            lm = lung_masks[side]
            if not lm.any():
                continue
            top, bottom = self.zone_box(lm, height)
            cols = np.flatnonzero(lm[top:bottom].any(axis=0))
            cy = (top + bottom) / 2.0 / n * 2 - 1 + rng.uniform(-0.03, 0.03)
            cx = (cols.mean() if cols.size else n / 2) / n * 2 - 1 + rng.uniform(-0.04, 0.04)
            ry, rx = (bottom - top) / n * rng.uniform(0.55, 0.8), rng.uniform(0.1, 0.17)
            lesion = grid.mask(deform(Ellipsoid((cy, cx), (ry, rx), rotation=rng.uniform(-0.5, 0.5)), rng, 0.15, 0.3))
            if k < len(zones):
                mask |= lesion & lm
            else:
                decoy |= lesion & lm & ~mask
        texture = smooth_random_field((n, n), rng, sigma=n / 60.0)
        opacity = ndimage.gaussian_filter((mask | decoy).astype(np.float32), sigma=n / 112.0)
        image += opacity * (0.22 + 0.05 * texture)
        image = apply_bias_field(image, rng, strength=0.08, sigma=n / 4.0)
        image = add_gaussian_noise(image, rng, self.noise_std)
        return np.clip(image, 0.0, 1.0).astype(np.float32), mask.astype(np.uint8), list(zones)
