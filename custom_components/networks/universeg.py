"""UniverSeg: in-context segmentation of a new task from a support set of labeled examples.

Butoi, Gonzalez Ortiz, Ma, Sabuncu, Guttag, Dalca, "UniverSeg: Universal Medical Image Segmentation",
ICCV 2023, https://arxiv.org/abs/2304.06131.

The network takes a query (target) image and a *support set* of ``S`` (image, binary label) pairs of one task
and returns the logits of that task's label on the query. A :class:`CrossBlock` mixes query and support features
at every scale of a U-Net: the query is convolved jointly with each support element (:class:`CrossConv2d`), the
results are averaged over the support (so the output does not depend on the order of the support set), and the
support features are updated from the same pairwise features.

Module names follow the state-dict layout of the official v1 model (44 tensors, 1,182,785 parameters at the
default widths), so :meth:`UniverSeg.from_official_checkpoint` loads a user's local copy of the official weights
with ``strict=True``. Those weights are licensed for research only; this module never downloads them.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from monai.networks.utils import copy_model_state
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = ["CrossConv2d", "CrossBlock", "UniverSeg", "load_universeg_state_dict"]

logger = logging.getLogger(__name__)


class CrossConv2d(nn.Conv2d):
    """Convolution of every element of one group with every element of another ("cross-convolution").

    For ``x`` of shape ``(B, Sx, Cx, H, W)`` and ``y`` of shape ``(B, Sy, Cy, H, W)`` the output element
    ``(b, i, j)`` is ``conv(cat([x[b, i], y[b, j]], channel))``, one 2D convolution with weights shared over the
    batch and over all pairs. The channel order of the concatenation is ``x`` first, then ``y``.

    Args:
        in_channels: ``(Cx, Cy)``, the channels of the two groups.
        out_channels: output channels.
        kernel_size: convolution kernel size (default 3).
        padding: zero padding (default 1, which keeps the spatial size with a 3x3 kernel).
        bias: add a learnable bias.

    Shapes:
        ``x``: ``(B, Sx, Cx, H, W)``; ``y``: ``(B, Sy, Cy, H, W)``; output ``(B, Sx, Sy, out_channels, H', W')``.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, kernel_size: int = 3, padding: int = 1, bias: bool = True
    ) -> None:
        cx, cy = (int(c) for c in in_channels)
        super().__init__(cx + cy, out_channels, kernel_size=kernel_size, padding=padding, bias=bias)
        self.group_channels = (cx, cy)

    def split(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves of every pair's convolution, never materialising the ``Sx * Sy`` pairs.

        A convolution of a channel concatenation is the sum of the convolutions of its parts with the matching
        slices of the weight, so ``out[b, i, j] = a[b, i] + c[b, j]`` with ``a = conv(x, W[:, :Cx]) + bias``
        ``(B, Sx, out, H', W')`` and ``c = conv(y, W[:, Cx:])`` ``(B, Sy, out, H', W')``: each group element is
        convolved once instead of once per pair (the group axis is folded into the batch).
        """
        cx = self.group_channels[0]
        b, sx, sy = x.shape[0], x.shape[1], y.shape[1]
        a = F.conv2d(x.flatten(0, 1), self.weight[:, :cx], self.bias, self.stride, self.padding, self.dilation)
        c = F.conv2d(y.flatten(0, 1), self.weight[:, cx:], None, self.stride, self.padding, self.dilation)
        return (
            a.reshape(b, sx, a.shape[1], a.shape[2], a.shape[3]),
            c.reshape(b, sy, c.shape[1], c.shape[2], c.shape[3]),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        a, c = self.split(x, y)
        return a.unsqueeze(2) + c.unsqueeze(1)


class _CrossOp(nn.Module):
    """Holder of the cross convolution (child ``cross_conv``, the official module path)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.cross_conv = CrossConv2d(in_channels, out_channels)

    def forward(self, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        # (B, 1, S, C, H, W) -> (B, S, C, H, W): the query group has one element
        return self.cross_conv(q, s).squeeze(1)


class _ConvAct(nn.Module):
    """3x3 convolution (child ``conv``) followed by LeakyReLU(0.01)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x), 0.01)


class _GroupConv(nn.Module):
    """Apply :class:`_ConvAct` (child ``vmapped``) to every element of a group ``(B, G, C, H, W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.vmapped = _ConvAct(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, g = x.shape[0], x.shape[1]
        out = self.vmapped(x.flatten(0, 1))
        return out.reshape(b, g, out.shape[1], out.shape[2], out.shape[3])


class CrossBlock(nn.Module):
    """The UniverSeg block: cross-convolve the query with each support element, then update both.

    With ``z_i = CrossConv([q, s_i])`` (no activation):

    - ``q' = LeakyReLU(Conv_target(mean_i z_i))``;
    - ``s'_i = LeakyReLU(Conv_support(z_i))``, one convolution shared over ``i``.

    The pairs are never built: ``z_i = a + c_i`` with the query half ``a`` convolved once and each support half
    ``c_i`` once (see :meth:`CrossConv2d.split`); without the support output only ``a + mean_i c_i`` is formed.

    Args:
        in_channels: ``(Cq, Cs)``, channels of the query and of the support features.
        channels: output channels of all three convolutions.
        cross_activation: apply LeakyReLU to ``z_i`` as in the paper's equations (the official code, and so
            the official weights, do not; default False).

    Shapes:
        ``q``: ``(B, 1, Cq, H, W)``; ``s``: ``(B, S, Cs, H, W)``; returns ``(B, 1, C, H, W)`` and
        ``(B, S, C, H, W)`` (the support output is ``None`` when ``compute_support`` is False).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, cross_activation: bool = False) -> None:
        super().__init__()
        self.cross = _CrossOp(in_channels, channels)
        self.target = _GroupConv(channels)
        self.support = _GroupConv(channels)
        self.cross_activation = cross_activation

    def forward(
        self, q: torch.Tensor, s: torch.Tensor, compute_support: bool = True
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.cross_activation:  # the activation sits between the pairs and their mean: build every pair
            z = F.leaky_relu(self.cross(q, s), 0.01)  # (B, S, C, H, W)
            q_out = self.target(z.mean(dim=1, keepdim=True))
            s_out: Optional[torch.Tensor] = None
            if compute_support:
                s_out = self.support(z)
            return q_out, s_out
        # z_i = a + c_i (a: the query half with the bias, c_i: the support halves), computed without the pairs
        a, c = self.cross.cross_conv.split(q, s)  # (B, 1, C, H, W), (B, S, C, H, W)
        if not compute_support:
            # only mean_i z_i = a + mean_i c_i is needed; for a support already averaged (S = 1) this is a + c
            return self.target(a + c.mean(dim=1, keepdim=True)), None
        z = a + c
        return self.target(z.mean(dim=1, keepdim=True)), self.support(z)


class _OutConv(nn.Module):
    """1x1 convolution head (child ``conv``), no activation."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UniverSeg(nn.Module):
    """UniverSeg (official v1 architecture): a U-Net of :class:`CrossBlock` over a query and a support set.

    Four encoder blocks (the first three followed by 2x2 max pooling of the query and of every support element,
    their outputs kept as skips) and three decoder blocks (bilinear x2 upsampling with ``align_corners=True``,
    concatenation with the skip on each path, then a block), and a 1x1 head on the query. The support path of the
    last decoder block is never used, so it is not computed; its weights are kept so that the state dict is the
    official one. That block's query update needs only the support mean of its cross convolution, which is linear
    in the support, so the support features are averaged before the upsampling, concatenation and convolution
    (equal up to float rounding; with ``cross_activation`` the pairs are built as before). There is no
    normalisation layer.

    Forward::

        logits = model(target_image, support_images, support_labels)

    with ``target_image`` ``(B, 1, H, W)``, ``support_images`` and ``support_labels`` ``(B, S, 1, H, W)`` (labels
    binary in {0, 1}), returning the logits ``(B, 1, H, W)`` of the task's label on the target (apply a sigmoid and
    threshold at 0.5). Inputs are expected min-max normalised to [0, 1]; the official weights were trained at
    128 x 128. ``H`` and ``W`` must be multiples of 8.

    A *packed episode* is also accepted, for tools that feed a network one tensor (``verify_net_in_out``,
    TorchScript tracing): ``model(episode)`` with ``episode`` ``(B, 1 + 2 S, H, W)`` whose channel 0 is the
    target image and channels ``2k + 1, 2k + 2`` the ``k``-th support image and label (see :meth:`pack`).

    The output does not depend on the order of the support set (up to float rounding).

    Args:
        encoder_channels: widths of the encoder blocks (the official model: ``(64, 64, 64, 64)``).
        decoder_channels: widths of the decoder blocks (``(64, 64, 64)``); one fewer than the encoder's.
        cross_activation: LeakyReLU after the cross convolution, as in the paper's equations; must be False to
            use the official weights.
        init_weights: kaiming-normal (fan-in) initialisation of every convolution with zero biases (the
            target/support convolutions with the leaky-ReLU gain, the cross convolutions and the head with the
            linear gain).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int] = (64, 64, 64, 64),
        decoder_channels: Sequence[int] = (64, 64, 64),
        cross_activation: bool = False,
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        enc = [int(c) for c in encoder_channels]
        dec = [int(c) for c in decoder_channels]
        if len(enc) < 2 or len(dec) != len(enc) - 1:
            raise ValueError(
                f"need at least 2 encoder widths and one decoder width fewer, got encoder {enc}, decoder {dec}"
            )
        self.encoder_channels = tuple(enc)
        self.decoder_channels = tuple(dec)
        self.cross_activation = bool(cross_activation)
        self.depth = len(dec)
        self.enc_blocks = nn.ModuleList()
        cq, cs = 1, 2  # query: image; support: image + label
        for c in enc:
            self.enc_blocks.append(CrossBlock((cq, cs), c, cross_activation))
            cq = cs = c
        self.dec_blocks = nn.ModuleList()
        skips = enc[:-1][::-1]
        for c, skip in zip(dec, skips):
            self.dec_blocks.append(CrossBlock((cq + skip, cs + skip), c, cross_activation))
            cq = cs = c
        self.out_conv = _OutConv(cq, 1)
        if init_weights:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan-in) weights and zero biases, as the official initialisation."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if name.endswith("vmapped.conv"):
                    nn.init.kaiming_normal_(module.weight, a=0.0, mode="fan_in", nonlinearity="leaky_relu")
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @staticmethod
    def pack(target_image: torch.Tensor, support_images: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """Pack an episode into one ``(B, 1 + 2 S, H, W)`` tensor (the inverse of the single-input forward)."""
        b, s = support_images.shape[0], support_images.shape[1]
        pairs = torch.cat([support_images, support_labels], dim=2)  # (B, S, 2, H, W)
        return torch.cat([target_image, pairs.reshape(b, 2 * s, pairs.shape[3], pairs.shape[4])], dim=1)

    def forward(
        self,
        target_image: torch.Tensor,
        support_images: Optional[torch.Tensor] = None,
        support_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if support_images is None or support_labels is None:
            if support_images is not None or support_labels is not None:
                raise ValueError("give both support_images and support_labels, or a packed episode alone")
            n = target_image.shape[1]
            if target_image.ndim != 4 or n < 3 or n % 2 == 0:
                raise ValueError(
                    f"a packed episode has shape (B, 1 + 2S, H, W) with S >= 1, got {list(target_image.shape)}"
                )
            b, h, w = target_image.shape[0], target_image.shape[2], target_image.shape[3]
            pairs = target_image[:, 1:].reshape(b, (n - 1) // 2, 2, h, w)
            support = pairs
            target = target_image[:, :1]
        else:
            if target_image.ndim != 4 or support_images.ndim != 5 or support_labels.ndim != 5:
                raise ValueError(
                    "expected target (B, 1, H, W) and support images/labels (B, S, 1, H, W), got "
                    f"{list(target_image.shape)}, {list(support_images.shape)}, {list(support_labels.shape)}"
                )
            support = torch.cat([support_images, support_labels], dim=2)
            target = target_image
        if support.shape[1] < 1:
            raise ValueError("the support set is empty")
        factor = 2**self.depth
        if target.shape[-1] % factor != 0 or target.shape[-2] % factor != 0:
            raise ValueError(f"H and W must be multiples of {factor}, got {list(target.shape[-2:])}")
        q = target.unsqueeze(1)  # (B, 1, 1, H, W)
        s = support
        skips: list[tuple[torch.Tensor, torch.Tensor]] = []
        n_enc = len(self.enc_blocks)
        for i, block in enumerate(self.enc_blocks):
            q, s_opt = block(q, s, True)
            assert s_opt is not None
            s = s_opt
            if i < n_enc - 1:
                skips.append((q, s))
                q = _pool(q)
                s = _pool(s)
        n_dec = len(self.dec_blocks)
        for i, block in enumerate(self.dec_blocks):
            q_skip, s_skip = skips[n_dec - 1 - i]
            q = torch.cat([_upsample(q), q_skip], dim=2)
            last = i == n_dec - 1
            if last and not self.cross_activation:
                # the last block only needs the support mean of its cross convolution, which is linear in the
                # support (as are the upsampling and the concatenation): average first, convolve one map
                s = torch.cat([_upsample(s.mean(dim=1, keepdim=True)), s_skip.mean(dim=1, keepdim=True)], dim=2)
            else:
                s = torch.cat([_upsample(s), s_skip], dim=2)
            q, s_opt = block(q, s, not last)
            if s_opt is not None:
                s = s_opt
        return self.out_conv(q.squeeze(1))

    @classmethod
    def from_official_checkpoint(cls, path: str | os.PathLike, **kwargs) -> UniverSeg:
        """A model with the weights of a local file in the official UniverSeg layout (``strict=True``).

        The file is read with ``torch.load(map_location="cpu", weights_only=True)``: a plain state dict, optionally
        wrapped as ``{"state_dict": ...}`` and with ``module.`` prefixes. Nothing is downloaded. The official
        weights (``universeg_v1_nf64_ss64_STA.pt``) are under a research-only licence that also covers models
        derived or distilled from them.

        Args:
            path: local checkpoint file.
            kwargs: constructor arguments (default: the official widths).

        Raises:
            FileNotFoundError: ``path`` is not a file.
            RuntimeError: keys or shapes do not match; the message lists every missing, unexpected and mis-shaped key.
        """
        model = cls(**{"init_weights": False, **kwargs})
        load_universeg_state_dict(model, path)
        return model


def _pool(x: torch.Tensor) -> torch.Tensor:
    b, g = x.shape[0], x.shape[1]
    y = F.max_pool2d(x.flatten(0, 1), 2, 2)
    return y.reshape(b, g, y.shape[1], y.shape[2], y.shape[3])


def _upsample(x: torch.Tensor) -> torch.Tensor:
    b, g = x.shape[0], x.shape[1]
    y = F.interpolate(x.flatten(0, 1), scale_factor=2.0, mode="bilinear", align_corners=True)
    return y.reshape(b, g, y.shape[1], y.shape[2], y.shape[3])


def _unwrap(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise RuntimeError(f"expected a state dict (a mapping of tensors), got {type(obj).__name__}")
    out = OrderedDict(obj)
    consume_prefix_in_state_dict_if_present(out, "module.")  # DataParallel/DDP prefixes
    return out


def load_universeg_state_dict(
    model: UniverSeg, state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike
) -> int:
    """Load an official-layout UniverSeg state dict (or a local file holding one) into ``model``, strictly.

    Returns:
        the number of tensors loaded.

    Raises:
        FileNotFoundError: a path that is not a file.
        RuntimeError: every missing, unexpected and mis-shaped key, in one message.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        if not os.path.isfile(state_dict_or_path):
            raise FileNotFoundError(
                f"UniverSeg checkpoint not found: {state_dict_or_path} (give a local file; nothing is downloaded)"
            )
        obj = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    else:
        obj = state_dict_or_path
    sd = _unwrap(obj)
    own = model.state_dict()
    # copy_model_state matches keys and shapes; whatever it leaves unchanged is either missing or mis-shaped
    merged, updated, unchanged = copy_model_state(model, sd, inplace=False)
    not_updated = set(unchanged)
    missing = [k for k in own if k in not_updated and k not in sd]
    unexpected = [k for k in sd if k not in own]
    mis_shaped = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in not_updated and k in sd
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
        lines += [f"shape mismatch: {m}" for m in mis_shaped]
        raise RuntimeError(
            f"the checkpoint does not match UniverSeg(encoder_channels={list(model.encoder_channels)}, "
            f"decoder_channels={list(model.decoder_channels)}):\n  " + "\n  ".join(lines)
        )
    model.load_state_dict(merged, strict=True)
    logger.info("loaded %d UniverSeg tensors", len(updated))
    return len(updated)
