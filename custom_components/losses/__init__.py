"""Losses of the bundles: the masked (CE + Dice)/2 of BCP (:class:`MaskedDiceCELoss`)."""

from .masked_dice_ce import MaskedDiceCELoss, masked_ce, masked_dice

__all__ = ["MaskedDiceCELoss", "masked_ce", "masked_dice"]
