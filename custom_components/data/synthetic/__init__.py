"""Synthetic-data toolkit shared by the bundles of this collection.

No real data ships with the bundles; each bundle generates a synthetic dataset in the layout of its
real one, so that every workflow runs on a fresh machine. The toolkit has four parts:

- :mod:`.shapes`: dimension-generic (2D and 3D) implicit shapes on a voxel grid with physical
  spacing: (super)ellipsoids with rotation, tubes along smooth curves with varying radius, rings
  (annulus / shell), crescents, half-spaces, their unions, intersections and differences, and smooth
  random deformation of any of them; :class:`~.shapes.Grid` rasterises a shape only inside its
  bounding box.
- :mod:`.noise`: smooth random fields (closed-form Fourier fields and Gaussian-filtered noise), smooth
  multiplicative/additive bias, Gaussian and Rician noise, partial-volume blur.
- :mod:`.phantoms`: anatomical phantoms; :class:`~.phantoms.AbdomenCTPhantom` renders abdominal CT in
  HU with the 13 BTCV organ labels (arrays in ``LPS`` order: axis 0 to the patient's left, axis 1
  posterior, axis 2 superior).
- :mod:`.io`: NIfTI (with a documented orientation) and PNG writers, datalist JSON written
  atomically, and :func:`~.io.build_dataset_atomically`, which builds a dataset in a temporary folder
  and renames it into place only on success (safe under ``torchrun``).

Everything random takes a :class:`numpy.random.Generator` or a seed; nothing uses global random state,
so a dataset is a pure function of its seed.
"""

from .io import build_dataset_atomically, nifti_affine, write_datalist, write_nifti, write_png
from .noise import (
    FourierField,
    add_gaussian_noise,
    add_rician_noise,
    apply_bias_field,
    partial_volume_blur,
    smooth_random_field,
)
from .phantoms import BTCV_CLASSES, AbdomenCTPhantom
from .cardiac import ACDC_CLASSES, CardiacMRIPhantom, LeftAtriumPhantom
from .shapes import (
    Deformed,
    Difference,
    Ellipsoid,
    Grid,
    HalfSpace,
    ImplicitShape,
    Intersection,
    Superellipsoid,
    Tube,
    Union,
    crescent,
    deform,
    ring,
    rotation_matrix,
    smooth_curve,
)

__all__ = [
    # shapes
    "Grid",
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
    "rotation_matrix",
    "smooth_curve",
    # noise
    "FourierField",
    "smooth_random_field",
    "apply_bias_field",
    "add_gaussian_noise",
    "add_rician_noise",
    "partial_volume_blur",
    # phantoms
    "BTCV_CLASSES",
    "AbdomenCTPhantom",
    "ACDC_CLASSES",
    "CardiacMRIPhantom",
    "LeftAtriumPhantom",
    # io
    "nifti_affine",
    "write_nifti",
    "write_png",
    "write_datalist",
    "build_dataset_atomically",
]
