"""Synthetic anatomical phantoms built from :mod:`.shapes` and :mod:`.noise`.

:class:`AbdomenCTPhantom` renders a contrast-enhanced (portal-venous-like) abdominal CT volume in
Hounsfield units with the 13 organ labels of BTCV (:data:`BTCV_CLASSES`).

Axis convention (patient frame)
-------------------------------
Arrays are indexed ``[x, y, z]`` with

- axis 0 (x) increasing towards the patient's **left**,
- axis 1 (y) increasing towards **posterior**,
- axis 2 (z) increasing towards **superior** (slice 0 is the lowest, the last slice holds the lung bases),

i.e. NIfTI orientation code ``LPS`` (``nibabel.aff2axcodes`` of :attr:`AbdomenCTPhantom.affine`), the
usual array order of a CT converted from DICOM. The affine is
``diag(-sx, -sy, sz)`` in RAS+ world coordinates (mm) with the volume centre at the world origin (see
:func:`.io.nifti_affine`). Displaying ``image[:, :, k].T`` with ``matplotlib.pyplot.imshow`` gives the
radiological view: anterior at the top, the patient's right on the left of the screen.

Anatomy is described in mm relative to the centre of the field of view (``x`` left, ``y`` posterior,
``z`` superior), so the phantom keeps its physical size whatever the grid; the default grid
(128 x 128 x 48 voxels of 3 x 3 x 5 mm) covers 384 x 384 x 240 mm, from the lung bases down to the
lower poles of the kidneys.

Per seed the phantom varies the habitus (body size, fat thickness), the patient position, each
organ's position, size, orientation and outline (smooth random deformation), and the contrast
(intensity of each tissue within realistic ranges); then it applies partial-volume blur, a smooth
additive bias and Gaussian noise. ``generate(seed)`` uses only ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .io import nifti_affine
from .noise import FourierField, add_gaussian_noise, apply_bias_field, partial_volume_blur, smooth_random_field
from .shapes import Ellipsoid, Grid, ImplicitShape, Superellipsoid, Tube, Union, crescent, deform, ring

__all__ = ["BTCV_CLASSES", "AbdomenCTPhantom"]


BTCV_CLASSES: tuple[str, ...] = (
    "background",
    "spleen",
    "right_kidney",
    "left_kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_and_splenic_veins",
    "pancreas",
    "right_adrenal_gland",
    "left_adrenal_gland",
)
"""BTCV label names; the position in the tuple is the label index (0 = background)."""

_L = {name: i for i, name in enumerate(BTCV_CLASSES)}
_GAS_HU = (-950.0, -850.0)

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class _Structure:
    """One structure of the phantom, in the patient frame (mm; x left, y posterior, z superior).

    Geometry is either a union of ellipsoids ``(center, radii, angles in degrees)`` (``notch`` cuts a
    second ellipsoid ``(offset in the first one's frame, radii)`` out of the first one) or a tube along
    a smooth ``path`` of ``(x, y, z, radius)`` points. ``core`` paints the inside
    ``value <= level`` with another intensity ``(level, hu_low, hu_high)`` (kidney medulla, stomach
    content); ``gas`` is the range of the anterior fraction of the core that is gas.
    """

    name: str
    label: int
    hu: tuple[float, float]
    ellipsoids: tuple[tuple[Vec3, Vec3, Vec3], ...] = ()
    notch: tuple[Vec3, Vec3] | None = None
    path: tuple[tuple[float, float, float, float], ...] = ()
    shift: float = 5.0
    scale: float = 0.1
    rotate: float = 8.0
    point_jitter: float = 2.0
    deform: float = 0.08
    wavelength: float = 60.0
    core: tuple[float, float, float] | None = None
    gas: tuple[float, float] | None = None


# Unlabelled soft tissue painted before the organs (organs override them).
_BACKGROUND_STRUCTURES: tuple[_Structure, ...] = (
    _Structure(
        "colon", 0, (35, 50),
        path=((-85, 10, -130, 20), (-88, 0, -50, 22), (-70, -40, -20, 22), (-20, -58, -35, 20), (30, -55, -25, 20),
              (85, -30, 20, 20), (95, 15, -30, 18), (92, 20, -130, 18)),
        shift=8, point_jitter=6, scale=0.15, deform=0.12, wavelength=50, core=(0.75, -80, 10), gas=(0.15, 0.6),
    ),
    _Structure(
        "duodenum", 0, (30, 45),
        path=((-18, -45, 0, 12), (-45, -30, -8, 13), (-58, -8, -30, 13), (-35, 0, -52, 12), (0, 8, -55, 11),
              (22, -2, -42, 10)),
        shift=5, point_jitter=4, deform=0.1, wavelength=40, core=(0.7, 10, 35), gas=(0.0, 0.3),
    ),
    _Structure("right_psoas", 0, (45, 55), path=((-22, 50, 25, 6), (-35, 46, -40, 16), (-48, 40, -130, 24)), shift=3),
    _Structure("left_psoas", 0, (45, 55), path=((22, 50, 25, 6), (35, 46, -40, 16), (48, 40, -130, 24)), shift=3),
    _Structure("sma", 0, (170, 240), path=((12, 12, 12, 4), (10, -6, -15, 4), (8, -12, -80, 3.5)), shift=2),
)

_LUNGS_AND_HEART: tuple[_Structure, ...] = (
    _Structure("right_lung", 0, (-880, -820), ellipsoids=(((-88, 25, 175), (72, 80, 100), (0, 0, 0)),),
               shift=6, scale=0.06, rotate=4, deform=0.05, wavelength=120),
    _Structure("left_lung", 0, (-880, -820), ellipsoids=(((88, 25, 168), (68, 80, 100), (0, 0, 0)),),
               shift=6, scale=0.06, rotate=4, deform=0.05, wavelength=120),
    _Structure("heart", 0, (50, 70), ellipsoids=(((25, -55, 160), (75, 55, 65), (0, 0, 15)),),
               shift=6, scale=0.08, rotate=5, deform=0.05, wavelength=100, core=(0.8, 110, 160)),
)

# Labelled organs, in painting order: later ones override earlier ones where they overlap.
_ORGANS: tuple[_Structure, ...] = (
    _Structure("liver", _L["liver"], (55, 65),
               ellipsoids=(((-65, 0, 35), (75, 85, 70), (0, 0, 0)), ((5, -45, 58), (45, 30, 35), (0, 10, -20))),
               shift=6, scale=0.1, rotate=5, deform=0.08, wavelength=90),
    _Structure("spleen", _L["spleen"], (45, 50), ellipsoids=(((92, 45, 48), (28, 55, 48), (0, 0, 30)),),
               shift=7, scale=0.15, rotate=10, deform=0.1, wavelength=60),
    _Structure("right_kidney", _L["right_kidney"], (145, 165),
               ellipsoids=(((-72, 50, -42), (25, 30, 55), (0, -15, -30)),),
               notch=((22, -8, 0), (10, 10, 22)), shift=6, scale=0.1, rotate=8, deform=0.06, wavelength=50,
               core=(0.55, 115, 135)),
    _Structure("left_kidney", _L["left_kidney"], (145, 165),
               ellipsoids=(((72, 45, -28), (25, 30, 55), (0, 15, 30)),),
               notch=((-22, -8, 0), (10, 10, 22)), shift=6, scale=0.1, rotate=8, deform=0.06, wavelength=50,
               core=(0.55, 115, 135)),
    _Structure("stomach", _L["stomach"], (40, 55),
               path=((62, 15, 88, 32), (68, -15, 62, 36), (55, -42, 30, 32), (28, -58, 8, 24), (0, -55, -2, 16),
                     (-18, -45, 0, 12)),
               shift=6, point_jitter=5, scale=0.15, deform=0.1, wavelength=60, core=(0.8, 10, 25), gas=(0.05, 0.35)),
    _Structure("esophagus", _L["esophagus"], (35, 45),
               path=((-3, 0, 135, 8), (5, -3, 105, 8), (24, -3, 84, 8), (38, 3, 74, 9)),
               shift=3, point_jitter=2, scale=0.1, deform=0.05, wavelength=30),
    _Structure("gallbladder", _L["gallbladder"], (5, 15), ellipsoids=(((-42, -42, -8), (15, 17, 35), (-30, 0, 15)),),
               shift=5, scale=0.2, rotate=12, deform=0.1, wavelength=40),
    _Structure("pancreas", _L["pancreas"], (35, 45),
               path=((-42, -8, -15, 17), (-18, -18, -5, 13), (12, -12, 4, 12), (45, 5, 12, 11), (78, 22, 24, 9)),
               shift=5, point_jitter=3, scale=0.12, deform=0.1, wavelength=40),
    _Structure("right_adrenal_gland", _L["right_adrenal_gland"], (25, 40),
               ellipsoids=(((-33, 40, 16), (5, 16, 20), (0, 0, -35)),), shift=3, scale=0.15, rotate=10, deform=0.1,
               wavelength=25),
    _Structure("left_adrenal_gland", _L["left_adrenal_gland"], (25, 40),
               ellipsoids=(((38, 36, 18), (5, 16, 20), (0, 0, 35)),), shift=3, scale=0.15, rotate=10, deform=0.1,
               wavelength=25),
    _Structure("portal_and_splenic_veins", _L["portal_and_splenic_veins"], (140, 170),
               path=((88, 28, 28, 5), (55, 18, 14, 5.5), (20, 8, 4, 6), (0, 5, 0, 7), (-22, 0, 15, 8), (-40, -5, 35, 7),
                     (-55, -5, 45, 5)),
               shift=3, point_jitter=2.5, scale=0.1, deform=0.05, wavelength=40),
    _Structure("inferior_vena_cava", _L["inferior_vena_cava"], (110, 130),
               path=((-22, 20, -130, 10), (-24, 18, -50, 11), (-26, 12, 20, 12), (-22, 2, 75, 13), (-12, -5, 130, 13)),
               shift=3, point_jitter=2, scale=0.1, deform=0.05, wavelength=50),
    _Structure("aorta", _L["aorta"], (180, 250),
               path=((8, 20, 130, 12), (10, 22, 40, 11), (12, 20, -40, 10), (14, 18, -130, 9)),
               shift=3, point_jitter=1.5, scale=0.1, deform=0.04, wavelength=50),
)


@dataclass
class _Canvas:
    """The volume being painted: intensities, labels, where organs may not go, the body wall."""

    grid: Grid
    image: np.ndarray
    label: np.ndarray
    blocked: np.ndarray
    wall: np.ndarray | None = None  # inside the outer boundary of the abdominal wall muscle
    hu_muscle: float = 45.0


class AbdomenCTPhantom:
    """Synthetic abdominal CT with the 13 BTCV organ labels.

    See the module docstring for the axis convention (``LPS`` arrays, volume centre at the origin).

    Args:
        shape: grid size ``(X, Y, Z)``.
        spacing: voxel size in mm.
        noise_std: standard deviation of the Gaussian noise (HU).
        bias_hu: standard deviation of the smooth additive bias field (HU).
        blur_fwhm: full width at half maximum (mm) of the partial-volume blur per axis; ``None`` is one
            voxel, ``0`` disables it.
        variability: scales every random variation of anatomy (0 gives the mean anatomy, only the
            contrast and noise vary).

    Example::

        image, label = AbdomenCTPhantom().generate(seed=3)   # float32 HU, uint8 BTCV labels
    """

    CLASS_NAMES: ClassVar[tuple[str, ...]] = BTCV_CLASSES
    AXCODES: ClassVar[str] = "LPS"

    def __init__(
        self,
        shape: Sequence[int] = (128, 128, 48),
        spacing: Sequence[float] = (3.0, 3.0, 5.0),
        noise_std: float = 15.0,
        bias_hu: float = 8.0,
        blur_fwhm: float | Sequence[float] | None = None,
        variability: float = 1.0,
    ):
        if len(shape) != 3 or len(spacing) != 3:
            raise ValueError(f"shape and spacing need 3 values, got {shape}, {spacing}")
        self.grid = Grid(tuple(shape), tuple(spacing))
        self.noise_std = float(noise_std)
        self.bias_hu = float(bias_hu)
        self.blur_fwhm = blur_fwhm
        self.variability = float(variability)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size ``(X, Y, Z)``."""
        return self.grid.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm)."""
        return self.grid.spacing

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS+ affine of the arrays (``LPS`` axis codes, volume centre at the origin)."""
        return nifti_affine(self.spacing, self.shape, self.AXCODES)

    def generate(self, seed: int | Sequence[int] | np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
        """Render one case.

        Args:
            seed: anything :func:`numpy.random.default_rng` accepts; same seed, same case.

        Returns:
            ``(image, label)``: float32 HU image and uint8 BTCV label map, both of shape ``(X, Y, Z)``.
        """
        rng = np.random.default_rng(seed)
        canvas = _Canvas(
            grid=self.grid,
            image=np.full(self.shape, -1000.0, dtype=np.float32),
            label=np.zeros(self.shape, dtype=np.uint8),
            blocked=np.zeros(self.shape, dtype=bool),
        )
        habitus = self._habitus(rng)
        self._paint_body(canvas, rng, habitus)
        self._paint_spine(canvas, rng, habitus)
        self._paint_small_bowel(canvas, rng, habitus)
        for spec in _BACKGROUND_STRUCTURES:
            self._paint_structure(canvas, spec, rng, habitus)
        for spec in _LUNGS_AND_HEART:
            self._paint_structure(canvas, spec, rng, habitus, block=True)
        for spec in _ORGANS:
            self._paint_structure(canvas, spec, rng, habitus)
        return self._acquire(canvas.image, rng), canvas.label

    # ----------------------------------------------------------------------------------------------
    # random variation
    # ----------------------------------------------------------------------------------------------
    def _habitus(self, rng: np.random.Generator) -> dict:
        """Patient-level variation: size (per axis), position in the field of view, fat thickness."""
        v = self.variability
        return {
            "scale": 1.0 + v * rng.uniform([-0.1, -0.1, -0.06], [0.06, 0.08, 0.06]),
            "shift": v * rng.uniform([-10, -8, -15], [10, 8, 15]),
            "fat": 15.0 + v * rng.uniform(-6, 12, size=2),
            "muscle": 11.0 + v * rng.uniform(-2, 3),
        }

    def _place(self, point: Sequence[float], habitus: dict, offset: np.ndarray) -> np.ndarray:
        return np.asarray(point, float) * habitus["scale"] + habitus["shift"] + offset

    def _sample_shape(self, spec: _Structure, rng: np.random.Generator, habitus: dict) -> ImplicitShape:
        """Per-case geometry of one structure (all random draws happen here, in a fixed order)."""
        v = self.variability
        offset = v * np.clip(rng.normal(0.0, spec.shift, 3), -2 * spec.shift, 2 * spec.shift)
        size = (1.0 + v * rng.uniform(-spec.scale, spec.scale)) * (1.0 + v * rng.uniform(-0.04, 0.04, 3))
        if spec.path:
            path = np.asarray(spec.path, float)
            points = np.stack([self._place(p, habitus, offset) for p in path[:, :3]])
            points += v * rng.normal(0.0, spec.point_jitter, points.shape)
            shape: ImplicitShape = Tube.from_curve(points, path[:, 3] * size.mean())
        else:
            parts = []
            for k, (center, radii, angles) in enumerate(spec.ellipsoids):
                rotation = np.radians(np.asarray(angles, float) + v * rng.normal(0.0, spec.rotate, 3))
                c, r = self._place(center, habitus, offset), np.asarray(radii, float) * size
                if k == 0 and spec.notch is not None:
                    notch_offset, notch_radii = (np.asarray(part, float) * size for part in spec.notch)
                    parts.append(crescent(c, r, notch_offset, notch_radii, rotation))
                else:
                    parts.append(Ellipsoid(c, r, rotation))
            shape = parts[0] if len(parts) == 1 else Union(tuple(parts))
        return deform(shape, rng, amplitude=v * spec.deform, wavelength=spec.wavelength)

    @staticmethod
    def _sample_hu(rng: np.random.Generator, spec: _Structure) -> tuple[float, float | None, float]:
        hu = rng.uniform(*spec.hu)
        core_hu = rng.uniform(spec.core[1], spec.core[2]) if spec.core else None
        gas = rng.uniform(*spec.gas) if spec.gas else 0.0
        return hu, core_hu, gas

    # ----------------------------------------------------------------------------------------------
    # painting
    # ----------------------------------------------------------------------------------------------
    def _paint_structure(
        self, canvas: _Canvas, spec: _Structure, rng: np.random.Generator, habitus: dict, block: bool = False
    ) -> None:
        """Rasterise one structure where allowed (inside the body cavity, not on bone/lung/heart)."""
        shape = self._sample_shape(spec, rng, habitus)
        hu, core_hu, gas = self._sample_hu(rng, spec)
        region, values = canvas.grid.evaluate(shape)
        if region is None:
            return
        inside = (values <= 1.0) & ~canvas.blocked[region]
        image, label = canvas.image[region], canvas.label[region]
        image[inside] = hu
        if spec.label:
            label[inside] = spec.label
        if core_hu is not None:
            core = inside & (values <= spec.core[0])
            image[core] = core_hu
            if gas > 0 and core.any():
                self._fill_gas(image, core, canvas.grid.coords(region)[1], gas, rng)
        if block:
            canvas.blocked[region] |= inside

    @staticmethod
    def _fill_gas(image: np.ndarray, core: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> None:
        """Gas rises anteriorly in a supine patient: fill the most anterior ``fraction`` of the lumen."""
        y_full = np.broadcast_to(y, core.shape)
        level = np.quantile(y_full[core], fraction)
        image[core & (y_full <= level)] = rng.uniform(*_GAS_HU)

    def _body_layers(self, rng: np.random.Generator, habitus: dict) -> list[np.ndarray]:
        """Axial outlines (2D values on the x-y grid) of skin, outer muscle wall and the body cavity."""
        grid2d = Grid(self.shape[:2], self.spacing[:2])
        center = np.array([0.0, 5.0]) * habitus["scale"][:2] + habitus["shift"][:2]
        radii = np.array([160.0, 115.0]) * habitus["scale"][:2]
        field = FourierField.random(rng, 2, wavelength=150.0)
        inner = radii - habitus["fat"]
        layers = [radii, inner, inner - habitus["muscle"]]
        coords = grid2d.coords()
        wobble = np.exp(0.04 * self.variability * field(coords))
        return [Superellipsoid(center, r, 2.3)(coords) * wobble for r in layers]

    def _paint_body(self, canvas: _Canvas, rng: np.random.Generator, habitus: dict) -> None:
        """Skin outline, subcutaneous fat, abdominal wall muscle, visceral fat in the cavity."""
        skin, wall, cavity = self._body_layers(rng, habitus)
        z = canvas.grid.axis_coords(2)
        taper = 1.0 + 0.03 * self.variability * rng.uniform(-1, 1) * z / 120.0  # slightly wider up or down
        hu_fat, hu_muscle, hu_visceral = rng.uniform(-110, -90), rng.uniform(40, 55), rng.uniform(-105, -85)
        for values, hu in ((skin, hu_fat), (wall, hu_muscle), (cavity, hu_visceral)):
            canvas.image[values[:, :, None] <= taper[None, None, :]] = hu
        canvas.wall = wall[:, :, None] <= taper[None, None, :]
        canvas.blocked |= ~(cavity[:, :, None] <= taper[None, None, :])
        canvas.hu_muscle = hu_muscle

    def _paint_spine(self, canvas: _Canvas, rng: np.random.Generator, habitus: dict) -> None:
        """Vertebrae (cortex, marrow, discs, canal, posterior arch and processes), back muscles, ribs."""
        coords = Grid(self.shape[:2], self.spacing[:2]).coords()
        centre = habitus["shift"][:2] + self.variability * rng.normal(0, 2, 2)

        def at(dx: float, dy: float) -> np.ndarray:
            return centre + (dx, dy * habitus["scale"][1])

        muscles = Ellipsoid(at(-38, 95), (30, 22)) | Ellipsoid(at(38, 95), (30, 22))
        body_values = Ellipsoid(at(0, 58), (20, 17))(coords)
        canal = Ellipsoid(at(0, 84), (9, 8))(coords) <= 1.0
        posterior = Union(
            (ring(at(0, 84), (16, 14), (9, 8)), Ellipsoid(at(0, 103), (5, 12)), Ellipsoid(at(-27, 80), (13, 5)),
             Ellipsoid(at(27, 80), (13, 5)))
        )(coords) <= 1.0
        hu_marrow, hu_cortex, hu_disc, hu_csf = (rng.uniform(*r) for r in ((200, 320), (600, 900), (70, 110), (5, 20)))
        period, phase = rng.uniform(32, 38), rng.uniform(0, 40)
        disc = np.mod(canvas.grid.axis_coords(2) - phase, period) < 7.0  # intervertebral discs along z

        back_muscles = (muscles(coords) <= 1.0)[:, :, None] & canvas.wall
        canvas.image[back_muscles] = canvas.hu_muscle
        bone = body_values <= 1.0
        vertebra = np.where(body_values > 0.85, hu_cortex, hu_marrow).astype(np.float32)
        for k in range(self.shape[2]):
            axial = canvas.image[:, :, k]
            if disc[k]:
                axial[bone] = hu_disc
            else:
                axial[bone] = vertebra[bone]
                axial[posterior] = 0.5 * (hu_cortex + hu_marrow)
            axial[canal] = hu_csf
        canvas.blocked |= back_muscles | (bone | posterior | canal)[:, :, None]
        self._paint_ribs(canvas, rng, habitus, hu_cortex)

    def _paint_ribs(self, canvas: _Canvas, rng: np.random.Generator, habitus: dict, hu: float) -> None:
        """Oblique rib cross-sections just inside the abdominal wall, in the upper half of the volume."""
        x, y, z = canvas.grid.coords()
        inner_band = canvas.wall & canvas.blocked  # wall muscle (blocked = outside the cavity)
        dx, dy = x - habitus["shift"][0], y - habitus["shift"][1]
        lateral = np.abs(dx) > 0.45 * np.hypot(dx, dy)  # not in the anterior/posterior midline
        z_top = rng.uniform(-40, -10) + habitus["shift"][2]
        period, phase, slope = rng.uniform(28, 36), rng.uniform(0, 36), rng.uniform(0.5, 0.7)
        rib = np.cos(2 * math.pi * (z - phase - slope * dy) / period) > 0.75  # ribs descend anteriorly
        mask = inner_band & lateral & rib & (z > z_top)
        canvas.image[mask] = hu

    def _paint_small_bowel(self, canvas: _Canvas, rng: np.random.Generator, habitus: dict) -> None:
        """Loops of small bowel (soft tissue with some gas) in the lower, anterior part of the cavity."""
        loops = smooth_random_field(self.shape, rng, sigma=(9.0, 9.0, 9.0), spacing=self.spacing)
        hu_bowel, threshold = rng.uniform(25, 40), rng.uniform(0.2, 0.6)
        x, y, z = canvas.grid.coords()
        zone = (z < 10.0 + habitus["shift"][2]) & (y < 25.0 + habitus["shift"][1])
        bowel = (loops > threshold) & zone & ~canvas.blocked
        canvas.image[bowel] = hu_bowel
        canvas.image[bowel & (loops > threshold + 1.8)] = rng.uniform(*_GAS_HU)

    def _acquire(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Scanner effects: partial-volume blur, smooth additive bias, noise; clip to the CT range."""
        if self.blur_fwhm is None or np.any(np.asarray(self.blur_fwhm) > 0):
            image = partial_volume_blur(image, self.spacing, self.blur_fwhm)
        if self.bias_hu > 0:
            image = apply_bias_field(image, rng, self.bias_hu, sigma=80.0, spacing=self.spacing, multiplicative=False)
        image = add_gaussian_noise(image, rng, self.noise_std)
        return np.clip(image, -1024.0, 3071.0, out=image)
