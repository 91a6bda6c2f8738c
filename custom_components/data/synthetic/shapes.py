"""Dimension-generic (2D and 3D) implicit shapes on a voxel grid with physical spacing.

A shape is an *implicit function* ``v(x)`` of physical coordinates (mm) that is ``<= 1`` inside
and ``> 1`` outside. The primitives use a normalised radius (ellipsoid: ``sqrt(sum(u_i^2))`` of the
local coordinates divided by the radii; tube: distance to the centre line divided by the radius), so
``v`` grows roughly linearly with the distance from the centre and ``v <= s`` is the shape scaled by
``s``. That makes shapes easy to compose and deform:

- union ``a | b`` = ``min(a, b)``, intersection ``a & b`` = ``max(a, b)``, difference ``a - b`` =
  ``max(a, 2 - b)`` (``2 - b`` is the complement of ``b`` with the same level 1);
- :func:`deform` multiplies ``v`` by ``exp(amplitude * f(x))`` with a smooth random
  :class:`~.noise.FourierField` ``f``: the outline moves by about ``amplitude`` times the local
  radius, and a star-shaped shape stays star-shaped (no holes, no islands).

Every shape knows an axis-aligned bounding box of its level sets (:meth:`ImplicitShape.bounds`), so
:class:`Grid` evaluates it only inside that box, which keeps rasterising many small organs in a large
volume cheap.

Coordinates are tuples of broadcastable arrays, one per axis (an "open grid" as from
:func:`numpy.ogrid`); :meth:`Grid.coords` builds them. Rotations follow ``x = c + R u`` (``u`` are
the local coordinates of the shape), see :func:`rotation_matrix`.

Example (2D)::

    grid = Grid((128, 128), spacing=(1.5, 1.5))
    lv = Ellipsoid((0, 0), (20, 20))
    myo = ring((0, 0), (30, 30), (20, 20))
    rv = crescent((-25, 0), (35, 30), cut_offset=(18, 0))
    mask = grid.mask(deform(myo, np.random.default_rng(0), amplitude=0.05, wavelength=40))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline

from .noise import FourierField

__all__ = [
    "Coords",
    "Grid",
    "rotation_matrix",
    "ImplicitShape",
    "Superellipsoid",
    "Ellipsoid",
    "Tube",
    "HalfSpace",
    "Union",
    "Intersection",
    "Difference",
    "Deformed",
    "ring",
    "crescent",
    "deform",
    "smooth_curve",
]

Coords = tuple[np.ndarray, ...]
"""One float32 coordinate array per axis (mm), broadcastable against each other."""

Region = tuple[slice, ...]

_COMPLEMENT = 2.0 + 1e-6  # 2 - v, nudged so that points exactly on a cut's boundary stay cut


def _vec(value: float | Sequence[float], ndim: int | None = None, name: str = "value") -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if ndim is not None and arr.shape != (ndim,):
        if arr.shape == (1,):
            return np.full(ndim, float(arr[0]))
        raise ValueError(f"{name} needs {ndim} values, got {value!r}")
    return arr


def rotation_matrix(rotation: float | Sequence[float] | np.ndarray | None, ndim: int) -> np.ndarray:
    """Build a rotation matrix.

    Args:
        rotation: ``None`` (identity); in 2D one angle (radians, counter-clockwise from axis 0 to
            axis 1); in 3D three angles ``(a0, a1, a2)`` (radians) about axes 0, 1 and 2, composed as
            ``R = R2(a2) @ R1(a1) @ R0(a0)``; or an ``ndim x ndim`` matrix, returned as is.
        ndim: 2 or 3.

    Returns:
        ``ndim x ndim`` float array ``R``; a shape's local coordinates ``u`` map to ``x = c + R u``.
    """
    if rotation is None:
        return np.eye(ndim)
    arr = np.asarray(rotation, dtype=float)
    if arr.shape == (ndim, ndim):
        return arr
    angles = np.atleast_1d(arr)
    if ndim == 2 and angles.shape == (1,):
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    if ndim == 3 and angles.shape == (3,):
        result = np.eye(3)
        for axis, angle in enumerate(angles):
            c, s = math.cos(angle), math.sin(angle)
            i, j = [a for a in range(3) if a != axis]
            step = np.eye(3)
            step[i, i], step[i, j], step[j, i], step[j, j] = c, -s, s, c
            result = step @ result
        return result
    raise ValueError(f"rotation for {ndim}D must be None, {'1' if ndim == 2 else '3'} angle(s) or a matrix")


def _open_grid_vectors(coords: Coords) -> list[np.ndarray] | None:
    """The 1D axis vectors when ``coords`` is an ascending open grid, else ``None``."""
    ndim = len(coords)
    vectors = []
    for axis, c in enumerate(coords):
        if c.ndim != ndim or any(n != 1 for j, n in enumerate(c.shape) if j != axis):
            return None
        v = c.reshape(-1)
        if v.size > 1 and np.any(np.diff(v) <= 0):
            return None
        vectors.append(v)
    return vectors


def _broadcast_shape(coords: Coords) -> tuple[int, ...]:
    return np.broadcast_shapes(*(c.shape for c in coords))


@dataclass(frozen=True)
class Grid:
    """A voxel grid with physical spacing: voxel ``i`` has centre ``origin + i * spacing`` (mm).

    Args:
        shape: number of voxels per axis (2 or 3 axes).
        spacing: voxel size per axis (default 1).
        origin: coordinate of voxel 0; default centres the grid on 0, so that shapes can be described
            relative to the centre of the field of view.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        spacing = tuple(_vec(1.0 if self.spacing is None else self.spacing, len(shape), "spacing"))
        if self.origin is None:
            origin = tuple(-(n - 1) / 2.0 * d for n, d in zip(shape, spacing))
        else:
            origin = tuple(_vec(self.origin, len(shape), "origin"))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in origin))

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def voxel_volume(self) -> float:
        """Volume (3D) or area (2D) of one voxel."""
        return float(np.prod(self.spacing))

    def axis_coords(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates along one axis (float32)."""
        return (self.origin[axis] + self.spacing[axis] * np.arange(self.shape[axis])).astype(np.float32)

    def coords(self, region: Region | None = None) -> Coords:
        """Open grid of physical coordinates, for the whole grid or for ``region`` (slices)."""
        region = region or tuple(slice(0, n) for n in self.shape)
        out = []
        for axis, sl in enumerate(region):
            shape = [1] * self.ndim
            vec = self.axis_coords(axis)[sl]
            shape[axis] = vec.size
            out.append(vec.reshape(shape))
        return tuple(out)

    def region(self, lower: Sequence[float], upper: Sequence[float]) -> Region | None:
        """Slices of the voxels whose centres lie in the box ``[lower, upper]``; ``None`` if empty."""
        slices = []
        for axis in range(self.ndim):
            lo = (lower[axis] - self.origin[axis]) / self.spacing[axis]
            hi = (upper[axis] - self.origin[axis]) / self.spacing[axis]
            start = max(0, math.ceil(lo)) if np.isfinite(lo) else 0
            stop = min(self.shape[axis], math.floor(hi) + 1) if np.isfinite(hi) else self.shape[axis]
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)

    def evaluate(self, shape: ImplicitShape, level: float = 1.0) -> tuple[Region | None, np.ndarray | None]:
        """Evaluate ``shape`` inside the bounding box of its ``level`` set.

        Returns:
            ``(region, values)``; ``(None, None)`` when the box misses the grid.
        """
        lower, upper = shape.bounds(level)
        region = self.region(lower, upper)
        if region is None:
            return None, None
        return region, shape(self.coords(region))

    def mask(self, shape: ImplicitShape) -> np.ndarray:
        """Full-size boolean mask of ``shape <= 1``."""
        out = np.zeros(self.shape, dtype=bool)
        region, values = self.evaluate(shape)
        if region is not None:
            out[region] = values <= 1.0
        return out


class ImplicitShape:
    """Base class: ``shape(coords)`` gives float32 values, ``<= 1`` inside.

    Subclasses implement ``__call__``, ``bounds`` and the ``ndim`` attribute. Operators: ``a | b``
    (union), ``a & b`` (intersection), ``a - b`` (difference).
    """

    ndim: int

    def __call__(self, coords: Coords) -> np.ndarray:
        raise NotImplementedError

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box ``(lower, upper)`` (mm) that contains the set ``{v <= level}``."""
        raise NotImplementedError

    def contains(self, coords: Coords) -> np.ndarray:
        """Boolean inside test ``v <= 1``."""
        return self(coords) <= 1.0

    def __or__(self, other: ImplicitShape) -> Union:
        return Union((self, other))

    def __and__(self, other: ImplicitShape) -> Intersection:
        return Intersection((self, other))

    def __sub__(self, other: ImplicitShape) -> Difference:
        return Difference(self, other)


@dataclass(frozen=True, eq=False)
class Superellipsoid(ImplicitShape):
    """Superellipse (2D) / superellipsoid (3D): ``v = (sum_i |u_i / r_i|^p)^(1/p)``.

    ``p = 2`` is an ellipse/ellipsoid, larger ``p`` is boxier (towards a rectangle/box), ``p < 2`` is
    pointier (``p = 1``: a rhombus/octahedron).

    Args:
        center: centre (mm).
        radii: semi-axes (mm) along the local axes.
        exponent: ``p > 0``.
        rotation: see :func:`rotation_matrix`.
    """

    center: Sequence[float]
    radii: Sequence[float]
    exponent: float = 2.0
    rotation: float | Sequence[float] | np.ndarray | None = None
    ndim: int = field(init=False)
    _matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        center = _vec(self.center, name="center")
        ndim = center.size
        radii = _vec(self.radii, ndim, "radii")
        if np.any(radii <= 0) or self.exponent <= 0:
            raise ValueError(f"radii and exponent must be positive, got {radii}, {self.exponent}")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "radii", radii)
        object.__setattr__(self, "ndim", ndim)
        object.__setattr__(self, "_matrix", rotation_matrix(self.rotation, ndim))

    def local_coords(self, coords: Coords) -> list[np.ndarray]:
        """Local coordinates ``u = R^T (x - c)`` divided by the radii."""
        shifted = [c - float(c0) for c, c0 in zip(coords, self.center)]
        out = []
        for i in range(self.ndim):
            u = None
            for j in range(self.ndim):
                weight = float(self._matrix[j, i] / self.radii[i])
                if weight != 0.0:
                    u = weight * shifted[j] if u is None else u + weight * shifted[j]
            out.append(u if u is not None else np.zeros_like(shifted[i]))
        return out

    def __call__(self, coords: Coords) -> np.ndarray:
        u = self.local_coords(coords)
        p = float(self.exponent)
        if p == 2.0:
            return np.sqrt(sum(ui * ui for ui in u)).astype(np.float32, copy=False)
        return (sum(np.abs(ui) ** p for ui in u) ** (1.0 / p)).astype(np.float32, copy=False)

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        scaled = self._matrix * self.radii[None, :]
        if self.exponent <= 2.0:  # inside the ellipsoid with the same radii: exact ellipsoid box
            half = np.sqrt((scaled**2).sum(axis=1))
        else:  # inside the box with the same radii
            half = np.abs(scaled).sum(axis=1)
        half = half * level
        return self.center - half, self.center + half


class Ellipsoid(Superellipsoid):
    """Ellipse (2D) / ellipsoid (3D) with optional rotation: ``Superellipsoid`` with ``p = 2``."""

    def __init__(self, center, radii, rotation=None):
        super().__init__(center, radii, 2.0, rotation)


@dataclass(frozen=True, eq=False)
class Tube(ImplicitShape):
    """Tube around a polyline: ``v = min over segments of distance / radius``.

    The radius is interpolated linearly along each segment, so tapering vessels (or a stomach that
    narrows towards the pylorus) are one tube. The ends are rounded. Use :meth:`from_curve` for a
    smooth centre line through a few control points.

    Args:
        points: ``(N, ndim)`` vertices of the centre line (mm), ``N >= 1``.
        radii: one radius or ``N`` radii (mm).
        cutoff: on an open grid (as from :meth:`Grid.coords`) each segment is evaluated only within
            ``cutoff`` radii of it, for speed; values above ``cutoff`` may be reported as ``+inf``.
            Keep it above the largest factor a deformation can apply (``exp(amplitude * bound)``).
    """

    points: np.ndarray
    radii: float | Sequence[float] = 1.0
    cutoff: float = 3.0
    ndim: int = field(init=False)

    def __post_init__(self):
        points = np.atleast_2d(np.asarray(self.points, dtype=float))
        radii = _vec(self.radii, points.shape[0], "radii")
        if np.any(radii <= 0):
            raise ValueError("tube radii must be positive")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "radii", radii)
        object.__setattr__(self, "ndim", points.shape[1])

    @classmethod
    def from_curve(
        cls, control_points: Sequence[Sequence[float]], radii: float | Sequence[float], samples_per_segment: int = 4
    ) -> Tube:
        """Tube along a smooth curve through ``control_points`` (radii interpolated along it)."""
        control = np.asarray(control_points, dtype=float)
        radii_arr = _vec(radii, control.shape[0], "radii")
        curve = smooth_curve(np.concatenate([control, radii_arr[:, None]], axis=1), samples_per_segment)
        return cls(curve[:, :-1], np.maximum(curve[:, -1], 1e-3))

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        pad = level * float(self.radii.max())
        return self.points.min(axis=0) - pad, self.points.max(axis=0) + pad

    def _segments(self):
        if len(self.points) == 1:
            yield self.points[0], self.points[0], self.radii[0], self.radii[0]
        for k in range(len(self.points) - 1):
            yield self.points[k], self.points[k + 1], self.radii[k], self.radii[k + 1]

    @staticmethod
    def _segment_value(coords: Coords, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
        d = b - a
        length2 = float(d @ d)
        rel = [c - float(ai) for c, ai in zip(coords, a)]
        if length2 > 0:
            t = sum(float(di / length2) * r for di, r in zip(d, rel))
            t = np.clip(t, 0.0, 1.0)
            rel = [r - float(di) * t for r, di in zip(rel, d)]
            radius = float(ra) + float(rb - ra) * t
        else:
            radius = float(ra)
        return np.sqrt(sum(r * r for r in rel)) / radius

    def __call__(self, coords: Coords) -> np.ndarray:
        out = np.full(_broadcast_shape(coords), np.inf, dtype=np.float32)
        vectors = _open_grid_vectors(coords)
        for a, b, ra, rb in self._segments():
            if vectors is None:  # arbitrary coordinates: evaluate everywhere
                np.minimum(out, self._segment_value(coords, a, b, ra, rb), out=out)
                continue
            # open grid: evaluate only the box where this segment's value can be below the cutoff
            pad = self.cutoff * max(ra, rb)
            lower, upper = np.minimum(a, b) - pad, np.maximum(a, b) + pad
            box = tuple(
                slice(int(np.searchsorted(v, lo)), int(np.searchsorted(v, hi, "right")))
                for v, lo, hi in zip(vectors, lower, upper)
            )
            if any(s.stop <= s.start for s in box):
                continue
            sub = tuple(
                v[s].reshape([-1 if j == i else 1 for j in range(self.ndim)])
                for i, (v, s) in enumerate(zip(vectors, box))
            )
            np.minimum(out[box], self._segment_value(sub, a, b, ra, rb), out=out[box])
        return out


@dataclass(frozen=True, eq=False)
class HalfSpace(ImplicitShape):
    """Half-space ``v = 1 + <x - point, normal> / scale``: inside on the side opposite to ``normal``.

    Intersect with it to cut a shape flat (``shape & HalfSpace(...)``). Unbounded.

    Args:
        point: a point on the boundary plane (mm).
        normal: outward normal (normalised internally).
        scale: distance over which ``v`` grows by 1 (mm).
    """

    point: Sequence[float]
    normal: Sequence[float]
    scale: float = 10.0
    ndim: int = field(init=False)

    def __post_init__(self):
        point = _vec(self.point, name="point")
        normal = _vec(self.normal, point.size, "normal")
        object.__setattr__(self, "point", point)
        object.__setattr__(self, "normal", normal / np.linalg.norm(normal))
        object.__setattr__(self, "ndim", point.size)

    def __call__(self, coords: Coords) -> np.ndarray:
        dist = sum(float(n) * (c - float(p)) for c, p, n in zip(coords, self.point, self.normal))
        return np.asarray(1.0 + dist / float(self.scale), dtype=np.float32)

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.ndim, -np.inf), np.full(self.ndim, np.inf)


@dataclass(frozen=True, eq=False)
class Union(ImplicitShape):
    """``min`` of the children's values."""

    shapes: tuple[ImplicitShape, ...]
    ndim: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "ndim", self.shapes[0].ndim)

    def __call__(self, coords: Coords) -> np.ndarray:
        return np.minimum.reduce([s(coords) for s in self.shapes])

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        boxes = [s.bounds(level) for s in self.shapes]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


@dataclass(frozen=True, eq=False)
class Intersection(Union):
    """``max`` of the children's values."""

    def __call__(self, coords: Coords) -> np.ndarray:
        return np.maximum.reduce([s(coords) for s in self.shapes])

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        boxes = [s.bounds(level) for s in self.shapes]
        return np.max([b[0] for b in boxes], axis=0), np.min([b[1] for b in boxes], axis=0)


@dataclass(frozen=True, eq=False)
class Difference(ImplicitShape):
    """``base`` minus ``cut``: ``max(base, 2 - cut)`` (the boundary of ``cut`` belongs to ``cut``)."""

    base: ImplicitShape
    cut: ImplicitShape
    ndim: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "ndim", self.base.ndim)

    def __call__(self, coords: Coords) -> np.ndarray:
        return np.maximum(self.base(coords), _COMPLEMENT - self.cut(coords))

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        return self.base.bounds(level)


@dataclass(frozen=True, eq=False)
class Deformed(ImplicitShape):
    """``shape`` with values multiplied by ``exp(amplitude * field(x))``.

    The outline moves by about ``amplitude * field`` times the local radius; the bounding box grows by
    the factor ``exp(amplitude * field.bound)``.
    """

    shape: ImplicitShape
    field: FourierField
    amplitude: float
    ndim: int = field(init=False)

    def __post_init__(self):
        if self.field.ndim != self.shape.ndim:
            raise ValueError("deformation field and shape differ in dimension")
        object.__setattr__(self, "ndim", self.shape.ndim)

    def __call__(self, coords: Coords) -> np.ndarray:
        return self.shape(coords) * np.exp(np.float32(self.amplitude) * self.field(coords))

    def bounds(self, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        return self.shape.bounds(level * math.exp(abs(self.amplitude) * self.field.bound))


def deform(
    shape: ImplicitShape,
    rng: np.random.Generator,
    amplitude: float = 0.1,
    wavelength: float = 50.0,
    n_components: int = 8,
) -> Deformed:
    """Smooth random deformation of ``shape`` (a random :class:`FourierField` of the given wavelength).

    Args:
        shape: shape to deform.
        rng: random generator (the only source of randomness).
        amplitude: relative size of the outline perturbation (0.1 is about 10 % of the radius).
        wavelength: spatial scale of the perturbation (mm); use about the size of the shape.
        n_components: number of cosines in the field.
    """
    return Deformed(shape, FourierField.random(rng, shape.ndim, wavelength, n_components), amplitude)


def ring(
    center: Sequence[float],
    outer_radii: float | Sequence[float],
    inner_radii: float | Sequence[float],
    rotation: float | Sequence[float] | np.ndarray | None = None,
    exponent: float = 2.0,
) -> Difference:
    """Annulus (2D) or ellipsoidal shell (3D) between two concentric (super)ellipsoids.

    Args:
        center: common centre.
        outer_radii: semi-axes of the outer boundary.
        inner_radii: semi-axes of the hole (each smaller than the outer one).
        rotation: common rotation.
        exponent: superellipsoid exponent of both boundaries.
    """
    ndim = len(center)
    outer, inner = _vec(outer_radii, ndim, "outer_radii"), _vec(inner_radii, ndim, "inner_radii")
    if np.any(inner >= outer):
        raise ValueError(f"inner radii {inner} must be smaller than outer radii {outer}")
    return Difference(
        Superellipsoid(center, outer, exponent, rotation), Superellipsoid(center, inner, exponent, rotation)
    )


def crescent(
    center: Sequence[float],
    radii: float | Sequence[float],
    cut_offset: Sequence[float],
    cut_radii: float | Sequence[float] | None = None,
    rotation: float | Sequence[float] | np.ndarray | None = None,
) -> Difference:
    """Crescent: an ellipse/ellipsoid minus a second one shifted by ``cut_offset``.

    The offset is given in the shape's local (rotated) frame; the crescent lies on the side opposite
    to it (e.g. the right ventricle wrapped around the left ventricle in a short-axis slice).

    Args:
        center: centre of the outer ellipse.
        radii: semi-axes of the outer ellipse.
        cut_offset: centre of the cut relative to ``center``, local frame.
        cut_radii: semi-axes of the cut (default: ``radii``).
        rotation: common rotation.
    """
    ndim = len(center)
    matrix = rotation_matrix(rotation, ndim)
    outer = _vec(radii, ndim, "radii")
    cut = outer if cut_radii is None else _vec(cut_radii, ndim, "cut_radii")
    cut_center = _vec(center, ndim, "center") + matrix @ _vec(cut_offset, ndim, "cut_offset")
    return Difference(Ellipsoid(center, outer, matrix), Ellipsoid(cut_center, cut, matrix))


def smooth_curve(control_points: np.ndarray, samples_per_segment: int = 4) -> np.ndarray:
    """Sample a smooth interpolating curve (cubic spline over chord length) through control points.

    Args:
        control_points: ``(N, D)`` points (extra columns, e.g. a radius, are interpolated too; the
            chord length uses all columns).
        samples_per_segment: output points per input segment.

    Returns:
        ``((N - 1) * samples_per_segment + 1, D)`` points, through every control point.
    """
    control = np.asarray(control_points, dtype=float)
    if len(control) < 3:
        if len(control) < 2:
            return control.copy()
        t = np.linspace(0.0, 1.0, samples_per_segment + 1)[:, None]
        return control[0] + t * (control[1] - control[0])
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))])
    keep = np.concatenate([[True], np.diff(chord) > 0])
    spline = CubicSpline(chord[keep], control[keep], bc_type="natural")
    samples = np.concatenate(
        [np.linspace(chord[k], chord[k + 1], samples_per_segment, endpoint=False) for k in range(len(chord) - 1)]
        + [chord[-1:]]
    )
    return spline(samples)
