"""A transform that stops a workflow on an unusable image once it is loaded, before the network sees it."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..data.validation import DEFAULT_MAX_ABS, InputDataError, image_problems

__all__ = ["CheckImaged"]


class CheckImaged(MapTransform):
    """Raise :class:`~custom_components.data.validation.InputDataError` naming the file when a loaded image has NaN
    or infinite voxels, absurd magnitudes, an unexpected number of channels or of spatial dimensions.

    Put it right after ``LoadImaged(..., ensure_channel_first=True)``: these are the inputs that otherwise either run
    through the network into a plausible-looking wrong label (NaN gives an all-background map) or crash deep inside it
    with a message that names no file. The checks are those of
    :func:`custom_components.data.validation.image_problems`.

    Args:
        keys: image keys to check.
        spatial_dims: accepted number(s) of spatial dimensions, e.g. ``3``, or ``[2, 3]``.
        channels: accepted number(s) of channels, e.g. ``1`` (grey) or ``[1, 3, 4]`` (grey, RGB, RGBA); ``None``: any.
        max_abs: largest accepted voxel magnitude (``None``: no limit).
        allow_missing_keys: as MONAI's ``MapTransform``.

    The file is named from the item's ``<key>_source`` entry when there is one (a DICOM series chosen from a folder
    of several, see :func:`~custom_components.data.validation.select_series`), else from the image's metadata.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int | Sequence[int] = 3,
                 channels: int | Sequence[int] | None = 1, max_abs: float | None = DEFAULT_MAX_ABS,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims if isinstance(spatial_dims, int) else tuple(spatial_dims)
        self.channels = channels if channels is None or isinstance(channels, int) else tuple(channels)
        self.max_abs = max_abs

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            problems = image_problems(d[key], self.spatial_dims, self.channels, self.max_abs)
            if problems:
                meta = getattr(d[key], "meta", {}) or {}
                name = d.get(f"{key}_source") or meta.get("filename_or_obj") or f"'{key}'"
                raise InputDataError(f"{name}: {'; '.join(problems)}")
        return d
