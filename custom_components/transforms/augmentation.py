"""A switch for the random augmentation of a training pipeline, so that a quick (CPU) recipe can train without it
while the paper's recipe keeps it, from one ``augment`` key of a config."""

from __future__ import annotations

from monai.transforms import (
    Compose,
    RandAxisFlipd,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

#: what counts as augmentation: flips, rotations, intensity scale and shift. Random crops and patch sampling are
#: not augmentation (they decide what the network sees) and always stay.
AUGMENTATIONS = (RandAxisFlipd, RandFlipd, RandRotate90d, RandRotated, RandScaleIntensityd, RandShiftIntensityd)


def with_augmentation(transform: Compose, enabled: bool = True) -> Compose:
    """``transform`` itself when ``enabled``, else a ``Compose`` of its transforms without the :data:`AUGMENTATIONS`
    (top level only, order kept).

    Example (a config)::

        "transform": "$custom_components.transforms.with_augmentation(@train#preprocessing, @augment)"
    """
    if enabled:
        return transform
    if not isinstance(transform, Compose):
        raise TypeError(f"with_augmentation expects a monai Compose, got {type(transform).__name__}")
    return Compose([t for t in transform.transforms if not isinstance(t, AUGMENTATIONS)])
