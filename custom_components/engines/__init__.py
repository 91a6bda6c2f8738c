"""Engine-side components of the bundles: trainers (BCP), ignite handlers, the mean-teacher EMA, the evaluation report
writer, few-shot inference, training helpers."""

from .bcp import BCPTrainer, largest_component_per_class, load_pretrained, pseudo_labels
from .ema import EMA, make_teacher
from .lvit import EPIStore, LViTSemiTrainer, TextPrepareBatch
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
    "BCPTrainer",
    "largest_component_per_class",
    "load_pretrained",
    "pseudo_labels",
    "EMA",
    "make_teacher",
    "EPIStore",
    "LViTSemiTrainer",
    "TextPrepareBatch",
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
