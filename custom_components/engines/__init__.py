"""Engine-side components of the bundles: trainers, ignite handlers, the mean-teacher EMA, the evaluation report
writer, few-shot inference, training helpers, and :class:`StagedOutputDir` (predictions appear complete or not at all).

Trainers: :class:`CustomStepTrainer` is MONAI's ``SupervisedTrainer`` training step (``prepare_batch``, zero-grad,
gradient accumulation, AMP autocast with the engine's device type + GradScaler, the iteration events in MONAI's order,
optional gradient clipping, the optimizer step) around a subclass's ``compute_pred``/``compute_loss``; the method
trainers are its subclasses: :class:`BCPTrainer` (copy-paste pre-training and self-training), :class:`LViTSemiTrainer`
(EPI pseudo labels + LV loss), :class:`VoCoTrainer` (VoCo pre-training with the EMA teacher).
:class:`KeysPrepareBatch` reads the image and target from chosen batch keys."""

from .bcp import BCPTrainer, largest_component_per_class, load_pretrained, pseudo_labels
from .checkpoint import AtomicCheckpointSaver, AtomicDiskSaver
from .ema import EMA, make_teacher
from .lvit import EPIStore, LViTSemiTrainer, TextPrepareBatch
from .output import StagedOutputDir
from .step import CustomStepTrainer, KeysPrepareBatch
from .voco import VoCoTrainer
from .fewshot import CombineLabelsd, FewShotInferer, PrepareEpisodeBatch, predict_episode
from .report import SegmentationReport, SegmentationReportHandler, compute_case_metrics, save_overlay_png
from .training import (
    cleanup_distributed,
    distributed_device,
    init_distributed,
    is_main_process,
    latest_checkpoint,
    make_resumable,
    wrap_ddp,
)

__all__ = [
    "StagedOutputDir",
    "CustomStepTrainer",
    "KeysPrepareBatch",
    "VoCoTrainer",
    "BCPTrainer",
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
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
    "make_resumable",
    "wrap_ddp",
]
