"""VoCo loss: predict each random crop's overlap with every base crop from feature similarity, and decorrelate bases.

Paper: Wu, Zhuang, Chen, "VoCo", CVPR 2024 (arXiv 2402.17300); official code Luffy03/VoCo ("10k" version).

Inputs per batch (B volumes, N random crops and K base crops per volume, D-dim projected features):
``x`` random-crop features ``(B, N, D)``, ``b`` base-crop features ``(B, K, D)``, ``y`` position labels ``(B, N, K)``
(overlap fractions, each row sums to 1).

``variant="repo"`` (official code, default): student features ``x_s, b_s`` and EMA-teacher features ``x_t, b_t``;

- logits ``l = (ReLU(cos(x_s, b_t)) + ReLU(cos(x_t, b_s))) / 2`` (no temperature, no softmax);
- ``L_pos = -sum(y * log(1 - |y - l| + 1e-6)) / (sum(y) + 1e-6)``;
- ``L_neg = sum_{y = 0} l^2 / (#{y = 0} + 1e-6)``;
- ``L_reg = mean_{i < j} ReLU(cos(b_s_i, stopgrad(b_s_j)))^2`` over the K student bases;
- ``L = L_pos + L_neg + L_reg``, each computed per volume and averaged over the volumes.

``variant="cvpr"`` (single network, the CVPR paper's description; no teacher):

- ``l = clamp(cos(x, b), 0, 1)`` (the paper's ``l`` is a cosine; clamping keeps ``1 - |y - l|`` positive);
- ``L_pred = -mean_{n,k} log(max(1 - |y - l|, 1e-6))``;
- ``L_reg = mean_{i != j} |cos(b_i, b_j)|``;
- ``L = L_pred + reg_weight * L_reg``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VoCoLoss", "voco_logits", "cosine_matrix"]

EPS = 1e-6


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row pair: ``(..., N, D), (..., K, D) -> (..., N, K)``."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def voco_logits(x_s: torch.Tensor, b_s: torch.Tensor, x_t: torch.Tensor | None = None,
                b_t: torch.Tensor | None = None) -> torch.Tensor:
    """Position logits ``(B, N, K)``: crosswise student/teacher ReLU-cosines averaged, or ``clamp(cos, 0, 1)``
    of a single network when no teacher features are given."""
    if x_t is None or b_t is None:
        return cosine_matrix(x_s, b_s).clamp(0.0, 1.0)
    return 0.5 * (F.relu(cosine_matrix(x_s, b_t)) + F.relu(cosine_matrix(x_t, b_s)))


class VoCoLoss(nn.Module):
    """VoCo prediction + regularisation loss (see the module docstring for both forms).

    Args:
        variant: ``"repo"`` (official code, EMA teacher, default) or ``"cvpr"`` (paper, single network).
        pos_weight, neg_weight, reg_weight: weights of ``L_pos`` (``L_pred`` for cvpr), ``L_neg`` (repo only) and
            ``L_reg`` (all 1 in the official code).

    ``forward(...)`` returns the total loss; :meth:`terms` returns ``{"loss", "pos", "neg", "reg", "logits"}``.
    """

    def __init__(self, variant: str = "repo", pos_weight: float = 1.0, neg_weight: float = 1.0,
                 reg_weight: float = 1.0) -> None:
        super().__init__()
        if variant not in ("repo", "cvpr"):
            raise ValueError(f"variant must be 'repo' or 'cvpr', got {variant!r}")
        self.variant = variant
        self.pos_weight, self.neg_weight, self.reg_weight = float(pos_weight), float(neg_weight), float(reg_weight)

    @property
    def needs_teacher(self) -> bool:
        return self.variant == "repo"

    def terms(self, x_s: torch.Tensor, b_s: torch.Tensor, labels: torch.Tensor, x_t: torch.Tensor | None = None,
              b_t: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x_s.ndim != 3 or b_s.ndim != 3 or labels.shape != (x_s.shape[0], x_s.shape[1], b_s.shape[1]):
            raise ValueError(f"expected x (B,N,D), b (B,K,D), labels (B,N,K); got {tuple(x_s.shape)}, "
                             f"{tuple(b_s.shape)}, {tuple(labels.shape)}")
        y = labels.to(x_s.dtype)
        if self.variant == "repo":
            if x_t is None or b_t is None:
                raise ValueError("the 'repo' VoCo loss needs teacher features (x_t, b_t)")
            logits = voco_logits(x_s, b_s, x_t.detach(), b_t.detach())
            pos = -(y * torch.log(1.0 - (y - logits).abs() + EPS)).sum((1, 2)) / (y.sum((1, 2)) + EPS)
            zero = (y == 0).to(y.dtype)
            neg = (zero * logits**2).sum((1, 2)) / (zero.sum((1, 2)) + EPS)
            reg = self._reg_repo(b_s)
        else:
            logits = voco_logits(x_s, b_s)
            pos = -torch.log((1.0 - (y - logits).abs()).clamp_min(EPS)).mean((1, 2))
            neg = torch.zeros_like(pos)
            reg = self._reg_cvpr(b_s)
        pos, neg, reg = pos.mean(), neg.mean(), reg.mean()
        total = self.pos_weight * pos + self.reg_weight * reg + (self.neg_weight * neg if self.variant == "repo" else 0)
        return {"loss": total, "pos": pos, "neg": neg, "reg": reg, "logits": logits}

    @staticmethod
    def _reg_repo(b: torch.Tensor) -> torch.Tensor:
        """Per volume: mean over pairs i < j of ``ReLU(cos(b_i, stopgrad(b_j)))^2``."""
        k = b.shape[1]
        sim = F.relu(F.normalize(b, dim=-1) @ F.normalize(b.detach(), dim=-1).transpose(1, 2)) ** 2
        iu = torch.triu_indices(k, k, offset=1, device=b.device)
        return sim[:, iu[0], iu[1]].mean(-1)

    @staticmethod
    def _reg_cvpr(b: torch.Tensor) -> torch.Tensor:
        """Per volume: mean over i != j of ``|cos(b_i, b_j)|``."""
        k = b.shape[1]
        sim = cosine_matrix(b, b).abs()
        off = ~torch.eye(k, dtype=torch.bool, device=b.device)
        return sim[:, off].mean(-1)

    def forward(self, x_s: torch.Tensor, b_s: torch.Tensor, labels: torch.Tensor, x_t: torch.Tensor | None = None,
                b_t: torch.Tensor | None = None) -> torch.Tensor:
        return self.terms(x_s, b_s, labels, x_t, b_t)["loss"]
