"""Losses of the bundles: the masked (CE + Dice)/2 of BCP (:class:`MaskedDiceCELoss`)."""

from .masked_dice_ce import MaskedDiceCELoss, masked_ce, masked_dice
from .voco import VoCoLoss
from .lvit import BalancedBCEDiceLoss, LVLoss, lv_loss

__all__ = ["MaskedDiceCELoss", "masked_ce", "masked_dice", "BalancedBCEDiceLoss", "LVLoss", "lv_loss", "VoCoLoss"]
