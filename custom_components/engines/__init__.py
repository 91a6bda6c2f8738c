"""Engine-side components of the bundles: trainers, ignite handlers, the evaluation report writer, training helpers."""

from .fewshot import CombineLabelsd, FewShotInferer, PrepareEpisodeBatch, predict_episode
from .report import SegmentationReport, SegmentationReportHandler, compute_case_metrics, save_overlay_png
from .training import (
    cleanup_distributed,
    distributed_device,
    init_distributed,
    is_main_process,
    latest_checkpoint,
    make_optimizer,
    make_resumable,
    wrap_ddp,
)

__all__ = [
    "CombineLabelsd",
    "FewShotInferer",
    "PrepareEpisodeBatch",
    "predict_episode",
    "SegmentationReport",
    "SegmentationReportHandler",
    "compute_case_metrics",
    "save_overlay_png",
    "cleanup_distributed",
    "distributed_device",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "make_optimizer",
    "make_resumable",
    "wrap_ddp",
]
