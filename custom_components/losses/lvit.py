"""Losses of LViT (Li et al., "LViT: Language meets Vision Transformer in Medical Image Segmentation", IEEE TMI 2023,
arXiv 2206.14718): the official supervised loss and the LV (language-vision) loss of the semi-supervised recipe.

- :class:`BalancedBCEDiceLoss`: ``bce_weight * balanced BCE + dice_weight * Dice`` on sigmoid probabilities of
  binary logits. The BCE is class-balanced over the whole batch, ``0.5 * sum(pos * bce) / n_pos +
  0.5 * sum(neg * bce) / n_neg`` (MONAI has no class-balanced BCE); the Dice is MONAI's :class:`~monai.losses.DiceLoss`
  with squared denominators, per sample, smoothing 1e-5 (``1 - (2 sum(pt) + 1e-5) / (sum(p^2) + sum(t^2) + 1e-5)``),
  exactly the official per-sample Dice. Soft targets (EPI pseudo labels) weight the positive/negative terms by ``t``
  and ``1 - t``.
- :func:`lv_loss` / :class:`LVLoss`: for each (unlabeled) image, the template of a bank whose sentence embedding is
  most similar to the image's sentence embedding (argmax of the cosine) is resized to the prediction, and the loss is
  ``1 - cos(vec(sigmoid(logits)), vec(template))``, in torch so that it is differentiable (the official helper was
  NumPy, without gradient, and never released).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["BalancedBCEDiceLoss", "balanced_bce", "lv_loss", "select_templates", "LVLoss"]


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Class-balanced binary cross-entropy over the whole batch (probabilities from ``sigmoid(logits)``).

    Args:
        logits: ``[B, 1, ...]``.
        target: same shape, in ``[0, 1]`` (hard or soft).
    """
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos, neg = target, 1.0 - target
    return 0.5 * (pos * bce).sum() / (pos.sum() + eps) + 0.5 * (neg * bce).sum() / (neg.sum() + eps)


class BalancedBCEDiceLoss(nn.Module):
    """The official LViT loss: ``bce_weight * balanced_bce + dice_weight * Dice`` (0.5 / 0.5) of binary logits.

    Shapes: ``logits [B, 1, H, W]``, ``target [B, 1, H, W]`` in ``[0, 1]`` -> scalar.
    """

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 0.5, smooth: float = 1e-5) -> None:
        super().__init__()
        self.bce_weight, self.dice_weight = float(bce_weight), float(dice_weight)
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=smooth, smooth_dr=smooth, batch=False,
                             include_background=True, reduction="mean")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError(f"BalancedBCEDiceLoss is for binary logits [B, 1, ...], got {list(logits.shape)}")
        target = torch.as_tensor(target).to(logits.device, logits.dtype)
        return self.bce_weight * balanced_bce(logits, target) + self.dice_weight * self.dice(logits, target)


def lv_loss(prob: torch.Tensor, template: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(vec(prob), vec(template))`` per sample, averaged; ``template`` is resized (bilinear) to ``prob``.

    Args:
        prob: ``[B, 1, H, W]`` probabilities (keeps the gradient).
        template: ``[B, 1, h, w]`` template masks in ``[0, 1]``.
    """
    if template.shape[-2:] != prob.shape[-2:]:
        template = F.interpolate(template.to(prob.dtype), size=prob.shape[-2:], mode="bilinear", align_corners=False)
    cos = F.cosine_similarity(prob.flatten(1), template.to(prob.dtype).flatten(1), dim=1, eps=eps)
    return (1.0 - cos).mean()


def select_templates(sentences: torch.Tensor, bank_embeddings: torch.Tensor) -> torch.Tensor:
    """Index of the bank template whose sentence embedding has the highest cosine similarity with each sentence.

    Shapes: ``sentences [B, D]``, ``bank_embeddings [K, D]`` -> ``[B]`` (long).
    """
    s = F.normalize(sentences.float(), dim=-1)
    b = F.normalize(bank_embeddings.float().to(s.device), dim=-1)
    return (s @ b.T).argmax(dim=1)


class LVLoss(nn.Module):
    """The LV loss against a template bank.

    Args:
        masks: template masks ``[K, 1, h, w]`` in ``[0, 1]`` (e.g. ``load_lv_bank(...)["masks"]``).
        embeddings: their sentence embeddings ``[K, D]``.

    Forward: ``logits [B, 1, H, W]``, ``sentences [B, D]`` (the images' sentence embeddings) -> scalar.
    """

    def __init__(self, masks: torch.Tensor, embeddings: torch.Tensor) -> None:
        super().__init__()
        if masks.shape[0] != embeddings.shape[0]:
            raise ValueError(f"{masks.shape[0]} template masks but {embeddings.shape[0]} embeddings")
        self.register_buffer("masks", masks.float(), persistent=False)
        self.register_buffer("embeddings", embeddings.float(), persistent=False)

    @classmethod
    def from_bank(cls, bank: dict) -> LVLoss:
        """From :func:`~custom_components.data.qata.load_lv_bank` output (read with a text cache)."""
        return cls(bank["masks"], bank["embeddings"])

    def forward(self, logits: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        idx = select_templates(sentences, self.embeddings).to(self.masks.device)
        template = self.masks[idx].to(logits.device)
        return lv_loss(torch.sigmoid(logits), template)
