"""MONAI-style transforms of the bundles (episode-level augmentation of few-shot tasks)."""

from .fewshot import RandBoundaryLabeld, RandInvertIntensityd, RandInvertLabeld, boundary_map

__all__ = ["RandBoundaryLabeld", "RandInvertIntensityd", "RandInvertLabeld", "boundary_map"]
