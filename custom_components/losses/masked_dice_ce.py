"""The masked (CE + Dice)/2 loss of BCP, with separate weights for the surround and the pasted box.

For one mixed image with logits ``P``, the mask ``M`` (1 on the surround, 0 in the box), a surround target ``Y_s``
with weight ``w_s`` and a box target ``Y_b`` with weight ``w_b``:

- ``CE = w_s * sum(CE(P, Y_s) * M) / sum(M) + w_b * sum(CE(P, Y_b) * (1-M)) / sum(1-M)``;
- ``Dice = w_s * Dice_M(P, Y_s) + w_b * Dice_{1-M}(P, Y_b)``;
- loss ``= (CE + Dice) / 2``.

Weights are 1 for ground-truth regions and ``alpha`` (0.5) for pseudo-labelled ones. The masked Dice is computed on
softmax probabilities for every class, background included, in one of two forms:

- ``"acdc"``: per class ``1 - (2 sum(p t m) + 1e-10) / (sum(p^2 m) + sum(t^2 m) + 1e-10)`` over the whole batch,
  averaged over classes;
- ``"la"``: per sample and class ``(2 sum(p t m) + 1e-5) / (sum((p + t) m) + 1e-5)``, loss ``1 - mean``.

``bug_compat=True`` reproduces the official ACDC code before its 2023-10 fix, where the background term ignored the
mask (it covered the whole image in both sub-terms).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["masked_dice", "masked_ce", "MaskedDiceCELoss"]


def _onehot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    if target.dim() >= 2 and target.shape[1] == 1:
        target = target[:, 0]
    return F.one_hot(target.long(), num_classes).movedim(-1, 1).float()


def masked_dice(
    probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, form: str = "acdc", bug_compat: bool = False
) -> torch.Tensor:
    """Masked soft Dice loss (see the module docstring).

    Args:
        probs: softmax probabilities ``[B, C, *spatial]``.
        target: label map ``[B, 1, *spatial]`` or ``[B, *spatial]`` (integers).
        mask: weight map broadcastable to ``[B, *spatial]`` (the spatial mask, or a batched one).
        form: ``"acdc"`` or ``"la"``.
        bug_compat: background term unmasked (official ACDC code before the fix).
    """
    num_classes = probs.shape[1]
    onehot = _onehot(target, num_classes)
    m = mask.to(probs).expand(probs.shape[:1] + probs.shape[2:]).unsqueeze(1).expand_as(probs)
    if bug_compat:
        m = torch.cat([torch.ones_like(m[:, :1]), m[:, 1:]], dim=1)
    spatial = tuple(range(2, probs.dim()))
    if form == "acdc":
        dims = (0,) + spatial
        inter = (probs * onehot * m).sum(dims)
        denom = (probs * probs * m).sum(dims) + (onehot * onehot * m).sum(dims)
        return (1.0 - (2.0 * inter + 1e-10) / (denom + 1e-10)).mean()
    if form == "la":
        inter = (probs * onehot * m).sum(spatial)
        denom = ((probs + onehot) * m).sum(spatial)
        return 1.0 - ((2.0 * inter + 1e-5) / (denom + 1e-5)).mean()
    raise ValueError(f"form must be 'acdc' or 'la', got {form!r}")


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(CE * m) / sum(m)`` over the batch (``m`` broadcast to ``[B, *spatial]``; 0 when the mask is empty)."""
    if target.dim() == logits.dim():
        target = target[:, 0]
    ce = F.cross_entropy(logits, target.long(), reduction="none")
    m = mask.to(ce).expand_as(ce)
    return (ce * m).sum() / m.sum().clamp_min(1e-16)


class MaskedDiceCELoss(nn.Module):
    """BCP loss of one mixed image: ``(CE + Dice) / 2`` with weight ``w_surround`` on ``M`` and ``w_box`` on ``1-M``.

    Args:
        dice_form: ``"acdc"`` (2D, background included, batch sums) or ``"la"`` (per sample and class).
        bug_compat: reproduce the official ACDC background-mask bug (``masked_dice_bug_compat``).

    Call ``loss(logits, target_surround, target_box, mask, w_surround=1.0, w_box=1.0)``; targets are label maps
    ``[B, 1, *spatial]``; ``mask`` is the spatial box mask of :func:`~custom_components.transforms.copy_paste.box_mask`.
    """

    def __init__(self, dice_form: str = "acdc", bug_compat: bool = False) -> None:
        super().__init__()
        if dice_form not in ("acdc", "la"):
            raise ValueError(f"dice_form must be 'acdc' or 'la', got {dice_form!r}")
        self.dice_form = dice_form
        self.bug_compat = bool(bug_compat)

    def terms(
        self,
        logits: torch.Tensor,
        target_surround: torch.Tensor,
        target_box: torch.Tensor,
        mask: torch.Tensor,
        w_surround: float = 1.0,
        w_box: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The weighted ``(Dice, CE)`` of one mixed image."""
        probs = torch.softmax(logits, dim=1)
        inv = 1.0 - mask
        dice = w_surround * masked_dice(probs, target_surround, mask, self.dice_form, self.bug_compat)
        dice = dice + w_box * masked_dice(probs, target_box, inv, self.dice_form, self.bug_compat)
        ce = w_surround * masked_ce(logits, target_surround, mask) + w_box * masked_ce(logits, target_box, inv)
        return dice, ce

    def forward(
        self,
        logits: torch.Tensor,
        target_surround: torch.Tensor,
        target_box: torch.Tensor,
        mask: torch.Tensor,
        w_surround: float = 1.0,
        w_box: float = 1.0,
    ) -> torch.Tensor:
        dice, ce = self.terms(logits, target_surround, target_box, mask, w_surround, w_box)
        return (dice + ce) / 2.0
