"""Cardiac cine-MRI-like and left-atrium-MRI-like phantoms for the BCP bundle (built on the shared toolkit).

:class:`CardiacMRIPhantom` renders a short-axis stack ``[H, W, D]`` (axis 2 from base to apex) with the ACDC labels
0 background, 1 right ventricle (RV), 2 myocardium (Myo), 3 left-ventricle blood pool (LV): a bright LV blood pool,
a dark myocardial ring around it, a bright crescent RV wrapped around the septum, surrounding tissue, fat, lungs
and a liver-like blob in a body outline, with a coil-shading bias field and Rician noise, min-max normalised to
[0, 1] per volume as the SSL4MIS preprocessing. Size, shape, wall thickness, position, rotation, ED/ES-like
contraction and the number of slices with RV vary per "patient" (seed); the LV and RV shrink towards the apex.

:class:`LeftAtriumPhantom` renders a 3D gadolinium-MRI-like volume with a binary left-atrium label: a deformed
ellipsoidal atrial body with 2-4 pulmonary veins (tubes) and an appendage, among brighter/darker blood pools and
tissue, z-scored as the UA-MT preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .noise import add_rician_noise, apply_bias_field, partial_volume_blur
from .shapes import Ellipsoid, Grid, Tube, crescent, deform, ring, smooth_curve

__all__ = ["ACDC_CLASSES", "CardiacMRIPhantom", "LeftAtriumPhantom"]

ACDC_CLASSES = ("background", "rv", "myo", "lv")


class CardiacMRIPhantom:
    """Short-axis cine-MRI-like stack with ACDC labels.

    Args:
        shape: ``(H, W, D)`` voxels (D short-axis slices, base first).
        spacing: voxel size in mm (ACDC is about 1.5 x 1.5 x 10).
        noise: Rician noise level relative to the blood-pool intensity.
    """

    def __init__(self, shape: Sequence[int] = (128, 128, 8), spacing: Sequence[float] = (1.6, 1.6, 10.0),
                 noise: float = 0.06) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.noise = float(noise)

    def generate(self, seed) -> tuple[np.ndarray, np.ndarray]:
        """``(image float32 [H, W, D] in [0, 1], label uint8 [H, W, D])`` for one patient."""
        rng = np.random.default_rng(seed)
        h, w, d = self.shape
        grid = Grid((h, w), self.spacing[:2])
        fov = np.array([h * self.spacing[0], w * self.spacing[1]])
        image = np.zeros(self.shape, np.float32)
        label = np.zeros(self.shape, np.uint8)
        # patient-level anatomy
        body_r = fov / 2 * rng.uniform([0.78, 0.85], [0.92, 0.97])
        heart = rng.uniform(-0.08, 0.08, 2) * fov
        lv_r = rng.uniform(17.0, 27.0)  # blood-pool radius at the base (mm); ES-like small, ED-like large
        wall = rng.uniform(6.0, 11.0)
        ecc = rng.uniform(0.85, 1.0)
        angle = rng.uniform(-0.6, 0.6) + np.pi * 0.75
        rv_slices = int(round(d * rng.uniform(0.55, 0.9)))
        tissue, myo_i, blood, fat, lung_i = rng.uniform(0.35, 0.5), rng.uniform(0.18, 0.3), rng.uniform(0.8, 1.0), \
            rng.uniform(0.75, 0.95), rng.uniform(0.02, 0.08)
        body = deform(Ellipsoid([0.0, 0.0], body_r), rng, 0.05, 150.0)
        inner_body = Ellipsoid([0.0, 0.0], body_r - rng.uniform(6, 12))
        lungs = [deform(Ellipsoid([s * body_r[0] * 0.35, -body_r[1] * 0.15], body_r * [0.28, 0.45]), rng, 0.1, 60.0)
                 for s in (-1, 1)]
        liver = deform(Ellipsoid([body_r[0] * 0.35, body_r[1] * 0.45], body_r * [0.45, 0.3]), rng, 0.1, 60.0)
        direction = np.array([np.cos(angle), np.sin(angle)])
        for z in range(d):
            t = z / max(d - 1, 1)
            scale = np.sqrt(max(1.0 - 0.75 * t**1.5, 0.12))  # towards the apex the cavities shrink
            r = lv_r * scale
            centre = heart + rng.normal(0, 0.6, 2) - direction * 4.0 * t
            slice_img = np.zeros((h, w), np.float32)
            slice_img[grid.mask(body)] = fat
            slice_img[grid.mask(inner_body)] = tissue
            for lung in lungs:
                slice_img[grid.mask(lung)] = lung_i
            slice_img[grid.mask(liver)] = tissue * 1.2
            lab = np.zeros((h, w), np.uint8)
            myo = deform(ring(centre, [r + wall, (r + wall) * ecc], [r, r * ecc], rotation=angle), rng, 0.04, 40.0)
            if z < rv_slices:
                rv_r = r * rng.uniform(1.5, 1.9) * (1.0 - 0.3 * z / max(rv_slices, 1))
                rv_centre = centre + direction * (r + wall) * 0.9
                rv = crescent(rv_centre, [rv_r, rv_r * 0.8], [-rv_r * 0.55, 0.0], [rv_r * 0.75, rv_r * 0.9],
                              rotation=angle)
                rv_mask = grid.mask(rv) & grid.mask(inner_body)
                slice_img[rv_mask] = blood * rng.uniform(0.9, 1.0)
                lab[rv_mask] = 1
            myo_mask = grid.mask(myo)
            slice_img[myo_mask] = myo_i
            lab[myo_mask] = 2
            lv_mask = ndimage.binary_fill_holes(myo_mask) & ~myo_mask
            # papillary-muscle-like dark spots inside the blood pool (labelled LV, as in ACDC)
            slice_img[lv_mask] = blood
            for _ in range(rng.integers(0, 3)):
                p = centre + rng.normal(0, r * 0.4, 2)
                slice_img[grid.mask(Ellipsoid(p, [2.0, 2.0])) & lv_mask] = myo_i * 1.3
            lab[lv_mask] = 3
            image[..., z], label[..., z] = slice_img, lab
        image = partial_volume_blur(image, self.spacing, (2.0, 2.0, 0.1))
        image = apply_bias_field(image, rng, 0.15, 120.0, self.spacing)
        image = add_rician_noise(image, rng, self.noise * blood)
        lo, hi = float(image.min()), float(np.percentile(image, 99.9))
        image = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
        return image, label


class LeftAtriumPhantom:
    """3D LGE-MRI-like volume with a binary left-atrium label (0 background, 1 left atrium).

    Args:
        shape: ``(H, W, D)`` voxels.
        spacing: voxel size in mm (LA is 0.625 mm isotropic; coarser here so small volumes hold the anatomy).
        noise: Rician noise level relative to the blood intensity.
    """

    def __init__(self, shape: Sequence[int] = (64, 64, 48), spacing: Sequence[float] = (1.25, 1.25, 1.25),
                 noise: float = 0.08) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.noise = float(noise)

    def generate(self, seed) -> tuple[np.ndarray, np.ndarray]:
        """``(image float32 [H, W, D] z-scored, label uint8 [H, W, D])``."""
        rng = np.random.default_rng(seed)
        grid = Grid(self.shape, self.spacing)
        ext = np.array(self.shape) * np.array(self.spacing)
        tissue, blood = rng.uniform(0.3, 0.45), rng.uniform(0.75, 1.0)
        image = np.full(self.shape, tissue, np.float32)
        centre = rng.uniform(-0.08, 0.08, 3) * ext
        radii = ext * rng.uniform([0.16, 0.13, 0.14], [0.24, 0.19, 0.2])
        body = deform(Ellipsoid(centre, radii, rng.uniform(-0.4, 0.4, 3)), rng, 0.12, 30.0)
        la = grid.mask(body)
        # pulmonary veins leaving the atrium backwards/sideways, and the appendage
        for k in range(int(rng.integers(2, 5))):
            side = 1.0 if k % 2 == 0 else -1.0
            start = centre + np.array([side * radii[0] * 0.6, -radii[1] * 0.5, rng.uniform(-0.5, 0.5) * radii[2]])
            end = start + np.array([side * rng.uniform(8, 16), -rng.uniform(10, 18), rng.uniform(-6, 6)])
            pts = np.stack([start, (start + end) / 2 + rng.normal(0, 2, 3), end])
            radius = rng.uniform(2.5, 4.0)
            curve = smooth_curve(np.column_stack([pts, [radius, radius * 0.9, radius * 0.8]]))
            la |= grid.mask(Tube.from_curve(curve[:, :3], curve[:, 3]))
        app = centre + np.array([radii[0] * 0.7, radii[1] * 0.7, radii[2] * 0.3])
        la |= grid.mask(deform(Ellipsoid(app, [6.0, 4.0, 4.0], rng.uniform(-1, 1, 3)), rng, 0.2, 10.0))
        # other blood pools (left ventricle below, aorta) brighter or similar: the network must use shape
        lv_c = centre + np.array([0.0, radii[1] * 1.6, -radii[2] * 0.9])
        lv = grid.mask(deform(Ellipsoid(lv_c, radii * 1.1), rng, 0.1, 30.0)) & ~la
        image[lv] = blood * rng.uniform(0.85, 1.05)
        aorta = grid.mask(Tube.from_curve(np.stack([centre + [-radii[0] * 1.3, radii[1], -ext[2]],
                                                    centre + [-radii[0] * 1.2, radii[1] * 0.8, ext[2]]]),
                                          rng.uniform(6, 9)))
        image[aorta & ~la] = blood * rng.uniform(0.9, 1.1)
        wall = grid.mask(deform(Ellipsoid(centre, radii + 2.5), rng, 0.12, 30.0)) & ~la
        image[wall] = tissue * 0.6
        image[la] = blood
        image = partial_volume_blur(image, self.spacing, 1.5)
        image = apply_bias_field(image, rng, 0.2, 60.0, self.spacing)
        image = add_rician_noise(image, rng, self.noise * blood)
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
        return image.astype(np.float32), la.astype(np.uint8)
