"""Smooth random fields and imaging noise for synthetic images (2D and 3D).

Everything takes an explicit :class:`numpy.random.Generator`, so a result depends only on the
seed of that generator (no global random state).

- :class:`FourierField`: a smooth zero-mean field defined in physical coordinates (a sum of a few
  random low-frequency cosines). It can be evaluated on any (sub-)grid, independently of the voxel
  size, which makes it the deformation field of :mod:`.shapes`.
- :func:`smooth_random_field`: Gaussian-filtered white noise on a voxel grid (unit standard
  deviation), computed on a coarser grid and interpolated back when the filter is wide.
- :func:`apply_bias_field`: a smooth multiplicative (MRI, X-ray) or additive (CT) bias.
- :func:`add_gaussian_noise`, :func:`add_rician_noise` (magnitude MRI) and
  :func:`partial_volume_blur` (the blur of a voxel's finite size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "FourierField",
    "smooth_random_field",
    "apply_bias_field",
    "add_gaussian_noise",
    "add_rician_noise",
    "partial_volume_blur",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _per_axis(value: float | Sequence[float] | None, ndim: int, default: float = 1.0) -> np.ndarray:
    """Broadcast a scalar or a per-axis sequence to an array of ``ndim`` floats."""
    if value is None:
        return np.full(ndim, default, dtype=float)
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        return np.full(ndim, float(arr))
    if arr.shape != (ndim,):
        raise ValueError(f"expected a scalar or {ndim} values, got {value!r}")
    return arr.copy()


@dataclass(frozen=True)
class FourierField:
    """Smooth random field ``f(x) = sum_k a_k cos(2*pi*<w_k, x> + phi_k)`` in physical coordinates.

    With ``a_k ~ N(0, 2/K)`` the field has zero mean and unit variance (over phases), and it is smooth
    at the scale ``wavelength``. Because it is a closed-form function of the coordinates (in mm), the
    same field can be evaluated on a whole image or on a sub-box of it, at any resolution.

    Args:
        frequencies: ``(K, ndim)`` spatial frequencies in cycles per unit length (mm).
        phases: ``(K,)`` phases in radians.
        amplitudes: ``(K,)`` amplitudes.
    """

    frequencies: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray

    @classmethod
    def random(
        cls, rng: np.random.Generator, ndim: int, wavelength: float, n_components: int = 8
    ) -> FourierField:
        """Draw a field of ``n_components`` cosines with wavelengths around ``wavelength`` (0.7x to 2x).

        Args:
            rng: random generator.
            ndim: number of spatial dimensions (2 or 3).
            wavelength: typical wavelength in physical units; features of the field are about half of it.
            n_components: number of cosines.
        """
        directions = rng.standard_normal((n_components, ndim))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12
        magnitudes = rng.uniform(0.5, 1.4, size=(n_components, 1)) / float(wavelength)
        phases = rng.uniform(0.0, 2.0 * math.pi, size=n_components)
        amplitudes = rng.standard_normal(n_components) * math.sqrt(2.0 / n_components)
        return cls(directions * magnitudes, phases, amplitudes)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return int(self.frequencies.shape[1])

    @property
    def bound(self) -> float:
        """An upper bound of ``|f(x)|`` over all ``x`` (sum of the absolute amplitudes)."""
        return float(np.abs(self.amplitudes).sum())

    def __call__(self, coords: Sequence[np.ndarray]) -> np.ndarray:
        """Evaluate the field on broadcastable coordinate arrays (one per axis), as float32."""
        if len(coords) != self.ndim:
            raise ValueError(f"field is {self.ndim}D, got {len(coords)} coordinate arrays")
        out = None
        for freq, phase, amp in zip(self.frequencies, self.phases, self.amplitudes):
            arg = np.float32(phase)
            for axis, c in enumerate(coords):
                arg = arg + np.float32(2.0 * math.pi * freq[axis]) * c
            term = np.float32(amp) * np.cos(arg, dtype=np.float32)
            out = term if out is None else out + term
        return np.asarray(out, dtype=np.float32)


def smooth_random_field(
    shape: Sequence[int],
    rng: np.random.Generator,
    sigma: float | Sequence[float],
    spacing: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to zero mean and unit standard deviation.

    When the filter is wide (``sigma`` of several voxels), the noise is filtered on a grid coarser by
    about ``sigma / 2`` and linearly interpolated back, which gives the same kind of field at a
    fraction of the cost.

    Args:
        shape: output shape (2D or 3D).
        rng: random generator.
        sigma: standard deviation of the Gaussian filter, in physical units when ``spacing`` is given
            (else in voxels); a scalar or one value per axis.
        spacing: voxel size per axis (default 1).

    Returns:
        float32 array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    sigma_vox = _per_axis(sigma, ndim) / _per_axis(spacing, ndim)
    factor = np.maximum(1, np.floor(sigma_vox / 2.0)).astype(int)
    coarse_shape = tuple(int(math.ceil(n / f)) + 1 for n, f in zip(shape, factor))
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.gaussian_filter(noise, sigma=sigma_vox / factor, mode="wrap")
    if np.any(factor > 1):
        # coarse sample i lands exactly on fine sample i * factor: output size (c - 1) * f + 1 >= n
        zoom = [((c - 1) * f + 1) / c for c, f in zip(coarse_shape, factor)]
        field = ndimage.zoom(field, zoom, order=1, grid_mode=False)
    field = field[tuple(slice(0, n) for n in shape)]
    field = field - field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32, copy=False)


def apply_bias_field(
    image: np.ndarray,
    rng: np.random.Generator,
    strength: float,
    sigma: float | Sequence[float],
    spacing: float | Sequence[float] | None = None,
    multiplicative: bool = True,
) -> np.ndarray:
    """Add a smooth low-frequency bias to an image.

    Args:
        image: 2D or 3D image.
        rng: random generator.
        strength: standard deviation of the bias: relative (e.g. 0.1 = 10 %) when multiplicative,
            in image units (e.g. HU) when additive.
        sigma: smoothness of the field (see :func:`smooth_random_field`).
        spacing: voxel size per axis.
        multiplicative: ``image * exp(strength * f)`` (MRI coil shading, X-ray exposure) when True,
            ``image + strength * f`` (CT beam-hardening-like offsets) when False.

    Returns:
        float32 image with the bias applied.
    """
    field = smooth_random_field(image.shape, rng, sigma, spacing)
    image = np.asarray(image, dtype=np.float32)
    if multiplicative:
        return image * np.exp(np.float32(strength) * field)
    return image + np.float32(strength) * field


def add_gaussian_noise(image: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Return ``image + N(0, std^2)`` as float32 (``std = 0`` returns a float32 copy)."""
    image = np.array(image, dtype=np.float32)
    if std > 0:
        image += np.float32(std) * rng.standard_normal(image.shape, dtype=np.float32)
    return image


def add_rician_noise(image: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Magnitude-MRI noise: ``|image + n_re + i n_im|`` with ``n ~ N(0, std^2)`` on both channels.

    The result is non-negative; in the background (``image = 0``) it is Rayleigh-distributed with
    mean ``std * sqrt(pi / 2)``.
    """
    image = np.asarray(image, dtype=np.float32)
    real = image + np.float32(std) * rng.standard_normal(image.shape, dtype=np.float32)
    imag = np.float32(std) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imag).astype(np.float32, copy=False)


def partial_volume_blur(
    image: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    fwhm: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Gaussian blur that stands for the finite voxel size (partial-volume effect).

    Args:
        image: 2D or 3D image.
        spacing: voxel size per axis (default 1).
        fwhm: full width at half maximum of the point-spread function per axis, in the units of
            ``spacing``; default one voxel on each axis (so thick slices blur more in mm).

    Returns:
        float32 blurred image.
    """
    image = np.asarray(image, dtype=np.float32)
    spacing_arr = _per_axis(spacing, image.ndim)
    fwhm_arr = spacing_arr if fwhm is None else _per_axis(fwhm, image.ndim)
    sigma_vox = fwhm_arr * _FWHM_TO_SIGMA / spacing_arr
    return ndimage.gaussian_filter(image, sigma=sigma_vox, mode="nearest", truncate=3.0)
