"""VoCo pre-training iteration for MONAI's ``SupervisedTrainer`` (``iteration_update``), and position accuracy.

One step of the official code (Luffy03/VoCo, "10k" version), for a batch of B volumes each giving N random and K base
crops (:class:`custom_components.transforms.VoCoCropsd`):

1. student forward on all ``B * (N + K)`` crops at once (one BatchNorm batch);
2. EMA update of the teacher from the pre-step student (``teacher <- m * teacher + (1 - m) * student``, m = 0.9),
   with the shared :class:`custom_components.engines.ema.EMA`;
3. teacher forward without gradient;
4. :class:`custom_components.losses.VoCoLoss` (its ``"cvpr"`` form skips steps 2 and 3), backward, optimizer step.

The engine output holds ``loss``, ``loss_pos``, ``loss_neg``, ``loss_reg`` (floats) and ``accuracy``: the fraction of
random crops whose arg-max logit is the arg-max of their position label (chance: 1/K).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .ema import EMA

__all__ = ["VoCoIteration", "split_crops", "position_accuracy", "evaluate_position_accuracy"]


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, "module") and isinstance(net.module, nn.Module) else net


def split_crops(features: torch.Tensor, batch: int, num_random: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B * (N + K), D)`` features (volume-major, random crops first) -> ``(B, N, D)`` and ``(B, K, D)``."""
    f = features.reshape(batch, -1, features.shape[-1])
    return f[:, :num_random], f[:, num_random:]


def position_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of random crops whose arg-max logit equals the arg-max of the position label."""
    return (logits.argmax(-1) == labels.argmax(-1)).float().mean().item()


class VoCoIteration:
    """``iteration_update(engine, batch)`` of a :class:`monai.engines.SupervisedTrainer` for VoCo pre-training.

    Args:
        network: a :class:`custom_components.networks.VoCoHead` (may be DDP-wrapped; its ``teacher`` is used for
            the ``"repo"`` loss).
        loss: :class:`custom_components.losses.VoCoLoss`.
        ema_momentum: teacher momentum (official: 0.9).
        image_key, labels_key: batch keys (crops ``(B, N + K, C, ...)`` and labels ``(B, N, K)``).
        grad_clip: max gradient norm (``None``/0: no clipping; the official non-AMP branch clips at 1).
    """

    def __init__(self, network: nn.Module, loss, ema_momentum: float = 0.9, image_key: str = "image",
                 labels_key: str = "position", grad_clip: float | None = None) -> None:
        self.network, self.loss = network, loss
        head = _unwrap(network)
        self.teacher = getattr(head, "teacher", None) if loss.needs_teacher else None
        if loss.needs_teacher and self.teacher is None:
            raise ValueError("the 'repo' VoCo loss needs a VoCoHead with a teacher (with_teacher=True)")
        self.ema = None
        if self.teacher is not None:
            self.ema = EMA(self.teacher, head.student, decay=ema_momentum, buffers=True)
        self.image_key, self.labels_key, self.grad_clip = image_key, labels_key, grad_clip

    def state_dict(self) -> dict:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_state_dict(self, state: Mapping) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(dict(state))

    def __call__(self, engine, batch: Mapping) -> dict:
        crops = batch[self.image_key].to(engine.state.device)
        device = crops.device
        labels = batch[self.labels_key].to(device).float()
        b, n = labels.shape[:2]
        flat = crops.reshape(-1, *crops.shape[2:])
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        student = self.network(flat)
        x_s, b_s = split_crops(student, b, n)
        x_t = b_t = None
        if self.teacher is not None:
            self.ema()  # after the student forward, before the teacher forward: the pre-step student
            with torch.no_grad():
                self.teacher.train()
                x_t, b_t = split_crops(self.teacher(flat), b, n)
        terms = self.loss.terms(x_s, b_s, labels, x_t, b_t)
        terms["loss"].backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        engine.optimizer.step()
        return {
            "loss": terms["loss"].item(),
            "loss_pos": terms["pos"].item(),
            "loss_neg": terms["neg"].item(),
            "loss_reg": terms["reg"].item(),
            "accuracy": position_accuracy(terms["logits"].detach(), labels),
        }


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
