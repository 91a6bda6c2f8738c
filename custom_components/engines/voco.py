"""VoCo pre-training trainer (:class:`VoCoTrainer`) and position accuracy.

One step of the official code (Luffy03/VoCo, "10k" version), for a batch of B volumes each giving N random and K base
crops (:class:`custom_components.transforms.VoCoCropsd`):

1. student forward on all ``B * (N + K)`` crops at once (one BatchNorm batch);
2. EMA update of the teacher from the pre-step student (``teacher <- m * teacher + (1 - m) * student``, m = 0.9),
   with the shared :class:`custom_components.engines.ema.EMA`;
3. teacher forward without gradient;
4. :class:`custom_components.losses.VoCoLoss` (its ``"cvpr"`` form skips steps 2 and 3), backward, optional gradient
   clipping, optimizer step.

Steps 1-3 and the loss are :class:`VoCoTrainer`'s ``compute_pred``/``compute_loss``; zero-grad, autocast (``amp``),
backward, clipping, the optimizer step and the iteration events are the shared step of
:class:`~custom_components.engines.step.CustomStepTrainer`. The engine output holds ``loss``, ``loss_pos``,
``loss_neg``, ``loss_reg`` and ``accuracy`` (detached scalar tensors): the fraction of random crops whose arg-max
logit is the arg-max of their position label (chance: 1/K).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from monai.utils import CommonKeys as Keys

from .ema import EMA
from .step import CustomStepTrainer, KeysPrepareBatch

__all__ = ["VoCoTrainer", "split_crops", "position_accuracy", "evaluate_position_accuracy"]


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, "module") and isinstance(net.module, nn.Module) else net


def split_crops(features: torch.Tensor, batch: int, num_random: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B * (N + K), D)`` features (volume-major, random crops first) -> ``(B, N, D)`` and ``(B, K, D)``."""
    f = features.reshape(batch, -1, features.shape[-1])
    return f[:, :num_random], f[:, num_random:]


def position_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of random crops whose arg-max logit equals the arg-max of the position label."""
    return (logits.argmax(-1) == labels.argmax(-1)).float().mean().item()


class _NoEMA:
    """Checkpoint stand-in of the EMA when the loss needs no teacher (the ``"cvpr"`` form): an empty state."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


class VoCoTrainer(CustomStepTrainer):
    """VoCo pre-training trainer: the VoCo forward and loss inside the shared MONAI-style training step of
    :class:`~custom_components.engines.step.CustomStepTrainer` (AMP with the engine's device type, gradient
    accumulation, the iteration events in MONAI's order, ``grad_clip`` between backward and optimizer step).

    Wu et al., "VoCo: A Simple-yet-Effective Volume Contrastive Learning Framework for 3D Medical Image Analysis",
    CVPR 2024 (official code Luffy03/VoCo, "10k" version). Batches hold crops ``(B, N + K, C, X, Y, Z)`` (``N``
    random crops first, then the ``K`` base crops) and position labels ``(B, N, K)``.

    Args (in addition to those of :class:`~monai.engines.SupervisedTrainer`; ``decollate`` defaults to ``False`` and
    ``optim_set_to_none`` to ``True``, as the official code):
        network: a :class:`custom_components.networks.VoCoHead` (may be DDP-wrapped; its ``teacher`` is used for
            the ``"repo"`` loss).
        loss_function: :class:`custom_components.losses.VoCoLoss`.
        ema_momentum: teacher momentum (official: 0.9).
        image_key, labels_key: batch keys of the crops and the position labels (read by the default
            ``prepare_batch``, :class:`~custom_components.engines.step.KeysPrepareBatch`).
        grad_clip: max gradient norm (``None``/0: no clipping; the official non-AMP branch clips at 1); with AMP the
            gradients are unscaled before clipping.

    Attributes:
        ema: the teacher's :class:`~custom_components.engines.ema.EMA` (``None`` for the ``"cvpr"`` loss).
        ema_state: what to save in checkpoints under ``"ema"`` (the EMA, or an empty stand-in without teacher).
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        train_data_loader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function,
        ema_momentum: float = 0.9,
        image_key: str = "image",
        labels_key: str = "position",
        grad_clip: float | None = None,
        **kwargs,
    ) -> None:
        head = _unwrap(network)
        teacher = getattr(head, "teacher", None) if loss_function.needs_teacher else None
        if loss_function.needs_teacher and teacher is None:
            raise ValueError("the 'repo' VoCo loss needs a VoCoHead with a teacher (with_teacher=True)")
        kwargs.setdefault("prepare_batch", KeysPrepareBatch(image_key, labels_key))
        kwargs.setdefault("decollate", False)
        kwargs.setdefault("optim_set_to_none", True)
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function, grad_clip=grad_clip, **kwargs)
        self.teacher = teacher
        self.ema = EMA(teacher, head.student, decay=ema_momentum, buffers=True) if teacher is not None else None
        self.ema_state = self.ema if self.ema is not None else _NoEMA()
        self._step_state: tuple | None = None  # (labels, student, teacher features) from compute_pred to compute_loss

    def compute_pred(self, engine, inputs: torch.Tensor, targets: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        """Student forward on all ``B * (N + K)`` crops at once (one BatchNorm batch); then, for the ``"repo"`` loss,
        the EMA update of the teacher from the pre-step student and the teacher forward without gradient.

        Returns:
            ``{}``: the features are kept for :meth:`compute_loss` only (the engine output holds scalars).
        """
        if targets is None:
            raise ValueError("VoCo batches need position labels (labels_key) next to the crops")
        flat = inputs.reshape(-1, *inputs.shape[2:])
        student = engine.inferer(flat, engine.network)
        teacher = None
        if self.teacher is not None:
            self.ema()  # after the student forward, before the teacher forward: the pre-step student
            with torch.no_grad():
                self.teacher.train()
                teacher = self.teacher(flat)
        self._step_state = (targets.float(), student, teacher)
        return {}

    def compute_loss(self, engine, output: dict) -> torch.Tensor:
        """:class:`~custom_components.losses.VoCoLoss` terms; the output gets ``loss``, ``loss_pos``, ``loss_neg``,
        ``loss_reg`` and ``accuracy`` (fraction of random crops whose arg-max logit is the arg-max of their position
        label; chance 1/K)."""
        (labels, student, teacher), self._step_state = self._step_state, None
        b, n = labels.shape[:2]
        x_s, b_s = split_crops(student, b, n)
        x_t, b_t = split_crops(teacher, b, n) if teacher is not None else (None, None)
        terms = engine.loss_function.terms(x_s, b_s, labels, x_t, b_t)
        output.update({Keys.LOSS: terms["loss"], "loss_pos": terms["pos"], "loss_neg": terms["neg"],
                       "loss_reg": terms["reg"]})
        output["accuracy"] = (terms["logits"].detach().argmax(-1) == labels.argmax(-1)).float().mean()
        return terms["loss"]


@torch.no_grad()
def evaluate_position_accuracy(network: nn.Module, loader, loss, device: torch.device | str = "cpu",
                               image_key: str = "image", labels_key: str = "position") -> dict:
    """Position-prediction accuracy and loss terms of a VoCoHead on held-out volumes (no update).

    The network stays in train mode (its BatchNorm layers keep no running statistics; batch statistics are the model).
    """
    head = _unwrap(network)
    teacher = getattr(head, "teacher", None) if loss.needs_teacher else None
    correct = total = 0
    sums = {"loss": 0.0, "pos": 0.0, "neg": 0.0, "reg": 0.0}
    batches = 0
    for batch in loader:
        crops = batch[image_key].to(device)
        labels = batch[labels_key].to(device).float()
        b, n = labels.shape[:2]
        flat = crops.reshape(-1, *crops.shape[2:])
        x_s, b_s = split_crops(head.student(flat), b, n)
        x_t = b_t = None
        if teacher is not None:
            x_t, b_t = split_crops(teacher(flat), b, n)
        terms = loss.terms(x_s, b_s, labels, x_t, b_t)
        correct += (terms["logits"].argmax(-1) == labels.argmax(-1)).sum().item()
        total += b * n
        for k in sums:
            sums[k] += terms[k].item()
        batches += 1
    return {"accuracy": correct / max(total, 1), **{k: v / max(batches, 1) for k, v in sums.items()}}
