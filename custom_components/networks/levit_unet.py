"""LeViT-UNet: a U-Net whose encoder is a LeViT vision transformer, for 2D medical image segmentation.

Xu, Wu, Zhang, He, "LeViT-UNet: Make Faster Encoders with Transformer for Medical Image Segmentation",
PRCV 2023 (LNCS 14432, pp. 42-53), https://arxiv.org/abs/2107.08623. The encoder is LeViT (Graham et al.,
"LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference", ICCV 2021,
https://arxiv.org/abs/2104.01136).

The module names reproduce the official implementation's state-dict keys, so a checkpoint of the official model
loads with ``strict=True`` (:func:`load_official_state_dict`), and ImageNet LeViT weights can initialise the
encoder (:func:`load_levit_imagenet`). Unlike the official code, any input size that is a multiple of 16 works.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import DropPath
from monai.networks.utils import copy_model_state
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

__all__ = ["LeViTUNet", "load_official_state_dict", "load_levit_imagenet"]

logger = logging.getLogger(__name__)

# variant -> (stage widths C, key dim D, heads per stage, depth per stage, default drop_path)
_VARIANTS: dict[str, tuple[tuple[int, int, int], int, tuple[int, int, int], tuple[int, int, int], float]] = {
    "128s": ((128, 256, 384), 16, (4, 6, 8), (2, 3, 4), 0.0),
    "192": ((192, 288, 384), 32, (3, 5, 6), (4, 4, 4), 0.0),
    "384": ((384, 512, 768), 32, (6, 9, 12), (4, 4, 4), 0.1),
}


def attention_bias_index(q_res: int, k_res: int, stride: int = 1) -> torch.Tensor:
    """Index table of LeViT's relative attention biases.

    Queries sit at ``stride * (row, col)`` on a ``q_res x q_res`` grid, keys at ``(row, col)`` on a ``k_res x k_res``
    grid. Entry ``[i, j]`` numbers the offset ``(|drow|, |dcol|)`` of the pair in first-seen order over all pairs
    (row-major). The first query, at ``(0, 0)``, already meets every offset ``(r, c)`` with ``r, c < k_res`` in
    row-major order, and no pair has a larger offset, so that order is simply ``|drow| * k_res + |dcol|``.

    Returns:
        a ``LongTensor`` of shape ``(q_res**2, k_res**2)`` with values in ``[0, k_res**2)``.
    """
    dist = (torch.arange(q_res)[:, None] * stride - torch.arange(k_res)[None, :]).abs()  # (q_res, k_res)
    idx = dist[:, None, :, None] * k_res + dist[None, :, None, :]  # (q_row, q_col, k_row, k_col)
    return idx.reshape(q_res * q_res, k_res * k_res)


class Conv2dBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (children ``c``, ``bn``), BN weight initialised to ``bn_weight``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2, bn_weight: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, bn_weight)


class LinearBN(nn.Module):
    """Linear without bias, then BatchNorm1d over all tokens (children ``c``, ``bn``); ``(B, N, a) -> (B, N, b)``."""

    def __init__(self, in_features: int, out_features: int, bn_weight: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


class Residual(nn.Module):
    """``x + drop_path(m(x))``: the branch is dropped per sample with probability ``drop_path`` in training."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.m(x))


def _mlp(dim: int, ratio: int = 2) -> nn.Sequential:
    """LeViT MLP ``dim -> ratio*dim -> dim`` (children ``0``, ``2``); the last BN starts at zero."""
    return nn.Sequential(LinearBN(dim, ratio * dim), nn.Hardswish(), LinearBN(ratio * dim, dim, bn_weight=0.0))


class _BiasedAttention(nn.Module):
    """Multi-head attention with LeViT's learned relative-position biases, shared by both attention types."""

    def __init__(self, key_dim: int, num_heads: int, value_dim: int, q_res: int, k_res: int, stride: int) -> None:
        super().__init__()
        self.key_dim = key_dim
        self.num_heads = num_heads
        self.value_dim = value_dim
        self.scale = key_dim**-0.5
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, k_res * k_res))
        self.register_buffer("attention_bias_idxs", attention_bias_index(q_res, k_res, stride))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, h, Nq, kd), (B, h, Nk, kd), (B, h, Nk, d) -> (B, Nq, h*d)``; biases are gathered on every call.

        The gather is one ``index_select`` over the flattened index table (its gradient an ``index_add``), and
        ``softmax(q k^T * scale + bias) v`` runs as one fused ``scaled_dot_product_attention`` with the bias as
        its additive mask.
        """
        idx = self.attention_bias_idxs
        bias = self.attention_biases.index_select(1, idx.reshape(-1))
        bias = bias.reshape(self.num_heads, idx.shape[0], idx.shape[1])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return out.transpose(1, 2).flatten(2)


class Attention(_BiasedAttention):
    """LeViT attention over a ``res x res`` token grid; ``(B, res**2, dim) -> (B, res**2, dim)``.

    Children: ``qkv`` (interleaved per head as q, k, v), ``proj`` (Hardswish, LinearBN with BN weight 0).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, res: int, attn_ratio: int = 2) -> None:
        super().__init__(key_dim, num_heads, attn_ratio * key_dim, res, res, 1)
        self.qkv = LinearBN(dim, num_heads * (2 * key_dim + self.value_dim))
        self.proj = nn.Sequential(nn.Hardswish(), LinearBN(num_heads * self.value_dim, dim, bn_weight=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=3)
        return self.proj(self.attend(q, k, v))


class Subsample(nn.Module):
    """Keep every ``stride``-th row and column of a ``res x res`` token grid; ``(B, res**2, C) -> (B, N', C)``."""

    def __init__(self, stride: int, res: int) -> None:
        super().__init__()
        self.stride = stride
        self.res = res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[2]
        return x.reshape(b, self.res, self.res, c)[:, :: self.stride, :: self.stride].reshape(b, -1, c)


class AttentionSubsample(_BiasedAttention):
    """LeViT shrinking attention (stride 2, no residual); ``(B, res**2, in_dim) -> (B, res'**2, out_dim)``.

    ``res' = (res - 1) // 2 + 1``. Children: ``kv`` (interleaved per head as k, v), ``q`` (Subsample, LinearBN),
    ``proj`` (Hardswish, LinearBN).
    """

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, num_heads: int, res: int, attn_ratio: int = 4) -> None:
        super().__init__(key_dim, num_heads, attn_ratio * key_dim, (res - 1) // 2 + 1, res, 2)
        self.kv = LinearBN(in_dim, num_heads * (key_dim + self.value_dim))
        self.q = nn.Sequential(Subsample(2, res), LinearBN(in_dim, num_heads * key_dim))
        self.proj = nn.Sequential(nn.Hardswish(), LinearBN(num_heads * self.value_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        kv = self.kv(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3)
        k, v = kv.split([self.key_dim, self.value_dim], dim=3)
        q = self.q(x).reshape(b, -1, self.num_heads, self.key_dim).permute(0, 2, 1, 3)
        return self.proj(self.attend(q, k, v))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()
    )


def _bilinear_taps(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``(n_out, 3 n_in)`` matrix ``[S_0 A | S_1 A | S_2 A]`` of one axis of a 3-tap convolution after a
    bilinear ``align_corners=True`` resize ``A`` ``(n_out, n_in)``: ``(S_d A)[y] = A[y + d - 1]`` (zero rows outside,
    the convolution's zero padding). ``A``'s source positions and weights are computed as ``F.interpolate`` does."""
    scale = (n_in - 1) / (n_out - 1) if n_in > 1 and n_out > 1 else 0.0
    src = torch.arange(n_out, device=device).to(dtype) * torch.tensor(scale, dtype=dtype, device=device)
    i0 = src.floor().clamp(0, n_in - 1)
    lam = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    cols = torch.arange(n_in, device=device).to(dtype)[None, :]
    a = (1 - lam)[:, None] * (cols == i0[:, None]).to(dtype) + lam[:, None] * (cols == i1[:, None]).to(dtype)
    a = F.pad(a, [0, 0, 1, 1])
    return torch.cat([a[0:n_out], a[1 : n_out + 1], a[2 : n_out + 2]], dim=1)


def _conv3x3_of_bilinear_up2(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv2d(interpolate(x, scale 2, bilinear, align_corners=True), weight, padding=1)``, 3x3 without bias.

    Resize and convolution are both linear, and the resize acts on each axis and channel separately, so
    ``out = sum_{dy,dx} (S_dy A_H) (W_{dy,dx} x) (S_dx A_W)^T``: the channel mixing ``W_{dy,dx} x`` runs at the input
    resolution (one 1x1 convolution to ``9 C_out`` maps, a quarter of the multiply-adds of the 3x3 convolution at
    the output resolution), then the two axes are contracted with the small ``[S_0 A | S_1 A | S_2 A]`` matrices.
    The upsampled ``C_in`` maps are never built. Equal to the direct form up to float rounding.
    """
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    co, ci = weight.shape[0], weight.shape[1]
    m_h = _bilinear_taps(h, 2 * h, x.dtype, x.device)  # (2h, 3h)
    m_w = _bilinear_taps(w, 2 * w, x.dtype, x.device)  # (2w, 3w)
    # channel c * 9 + dx * 3 + dy. The dilation does nothing to a 1x1 kernel; it only makes CPU PyTorch pick its
    # oneDNN convolution over the single-threaded THNN one, about twice as fast for these wide 1x1 layers
    mixed = F.conv2d(x, weight.permute(0, 3, 2, 1).reshape(co * 9, ci, 1, 1), dilation=2)
    rows = torch.matmul(m_h, mixed.reshape(b, co, 3, 3 * h, w))  # (b, c, dx, 2h, w)
    rows = rows.permute(0, 1, 3, 2, 4).reshape(b, co, 2 * h, 3 * w)  # (b, c, 2h, (dx, w))
    return torch.matmul(rows, m_w.t())  # (b, c, 2h, 2w)


class DecoderBlock(nn.Sequential):
    """Bilinear x2 upsampling (align_corners=True), then two 3x3 conv-BN-ReLU layers (children ``conv1``, ``conv2``).

    The upsampling and the first convolution run fused (:func:`_conv3x3_of_bilinear_up2`): the same function,
    without the upsampled input.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                up=nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                conv1=_conv_bn_relu(in_channels, out_channels),
                conv2=_conv_bn_relu(out_channels, out_channels),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv1
        y = _conv3x3_of_bilinear_up2(x, first[0].weight)
        return self.conv2(first[2](first[1](y)))


def _upsample(x: torch.Tensor, size: list[int] | None = None) -> torch.Tensor:
    """Bilinear (align_corners=True) resize to ``size``, or by 2 when ``size`` is None."""
    if size is None:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class LeViTUNet(nn.Module):
    """LeViT-UNet for 2D segmentation, as in the official implementation.

    Xu et al., "LeViT-UNet: Make Faster Encoders with Transformer for Medical Image Segmentation", PRCV 2023,
    https://arxiv.org/abs/2107.08623.

    A four-conv stem (``cnn_b1``..``cnn_b4``, each 3x3 stride 2) turns the image into a 1/16 token grid, which three
    LeViT stages (``block_1``..``block_3``) process at 1/16, 1/32 and 1/64. All three stage outputs are upsampled to
    1/16 and concatenated with the stem output; a CNN decoder (``decoderBlock_1``..``decoderBlock_3``, each upsampling
    by 2 before its convs) restores 1/2 resolution using the stem's 1/8, 1/4 and 1/2 features as skips, and the head
    (``segmentation_head``: 3x3 conv, bilinear x2) gives full-resolution logits.

    With the default ``decoder_channels`` the module reproduces the official model and its state-dict keys; at
    ``img_size=224`` and 9 classes it has 15,904,715 (128s), 19,904,670 (192) or 52,166,029 (384) parameters. The
    module can be compiled with ``torch.jit.script``.

    Args:
        variant: LeViT encoder size, one of ``"128s"``, ``"192"``, ``"384"``.
        in_channels: number of input channels (1 in the paper).
        out_channels: number of output classes, background included (9 for Synapse, 4 for ACDC).
        img_size: input height and width, a multiple of 16 (224 in the paper). It sets the token grids
            (``img_size // 16``, then ``(res - 1) // 2 + 1`` twice) and the attention-bias tables.
        drop_path: drop-path probability of every residual transformer branch; None uses the variant's default
            (0 for 128s and 192, 0.1 for 384).
        decoder_channels: output channels of the three decoder blocks (official: ``(512, 256, 128)``); smaller
            values give a lighter decoder.

    Input:
        ``(B, in_channels, img_size, img_size)`` tensor.

    Output:
        ``(B, out_channels, img_size, img_size)`` logits.

    Raises:
        ValueError: for an unknown ``variant``, an ``img_size`` that is not a positive multiple of 16, or
            ``decoder_channels`` that are not three positive integers.
    """

    def __init__(
        self,
        variant: str = "128s",
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: int = 224,
        drop_path: float | None = None,
        decoder_channels: Sequence[int] = (512, 256, 128),
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}.")
        if img_size <= 0 or img_size % 16 != 0:
            raise ValueError(f"img_size must be a positive multiple of 16 (the stem downsamples 16x), got {img_size}.")
        if len(decoder_channels) != 3 or min(decoder_channels) <= 0:
            raise ValueError(f"decoder_channels must be three positive integers, got {tuple(decoder_channels)}.")
        widths, key_dim, heads, depths, default_drop = _VARIANTS[variant]
        drop = default_drop if drop_path is None else drop_path
        n = widths[0]
        res = [img_size // 16]
        for _ in range(2):
            res.append((res[-1] - 1) // 2 + 1)
        self.variant = variant
        self.img_size = img_size
        self.res = res

        self.cnn_b1 = nn.Sequential(Conv2dBN(in_channels, n // 8), nn.Hardswish())
        self.cnn_b2 = nn.Sequential(Conv2dBN(n // 8, n // 4), nn.Hardswish())
        self.cnn_b3 = nn.Sequential(Conv2dBN(n // 4, n // 2), nn.Hardswish())
        self.cnn_b4 = nn.Sequential(Conv2dBN(n // 2, n))

        # the LeViT blocks keep their global index as module name: stage i is preceded (i > 0) by a subsampling
        # attention and its residual MLP, then holds depth[i] pairs of residual attention and residual MLP.
        first = 0
        stages: list[nn.Sequential] = []
        for i in range(3):
            stage: list[nn.Module] = []
            if i > 0:
                heads_sub = widths[i - 1] // key_dim
                stage.append(AttentionSubsample(widths[i - 1], widths[i], key_dim, heads_sub, res[i - 1]))
                stage.append(Residual(_mlp(widths[i]), drop))
            for _ in range(depths[i]):
                stage.append(Residual(Attention(widths[i], key_dim, heads[i], res[i]), drop))
                stage.append(Residual(_mlp(widths[i]), drop))
            stages.append(nn.Sequential(OrderedDict((str(first + j), m) for j, m in enumerate(stage))))
            first += len(stage)
        self.block_1, self.block_2, self.block_3 = stages

        d1, d2, d3 = decoder_channels
        self.decoderBlock_1 = DecoderBlock(n + sum(widths), d1)
        self.decoderBlock_2 = DecoderBlock(d1 + n // 2, d2)
        self.decoderBlock_3 = DecoderBlock(d2 + n // 4, d3)
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(d3 + n // 8, out_channels, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        )

    @staticmethod
    def _to_grid(tokens: torch.Tensor, res: int) -> torch.Tensor:
        """``(B, res*res, C) -> (B, C, res, res)``."""
        return tokens.reshape(tokens.shape[0], res, res, tokens.shape[2]).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cnn_b1(x)
        x2 = self.cnn_b2(x1)
        x3 = self.cnn_b3(x2)
        xc = self.cnn_b4(x3)
        t1 = self.block_1(xc.flatten(2).transpose(1, 2))
        t2 = self.block_2(t1)
        t3 = self.block_3(t2)
        size = [self.res[0], self.res[0]]
        r2 = _upsample(self._to_grid(t2, self.res[1]), size)  # x2 (exactly when res[0] is even)
        r3 = _upsample(_upsample(_upsample(self._to_grid(t3, self.res[2]))), size)  # x2, x2, then to res[0]
        fused = torch.cat([xc, self._to_grid(t1, self.res[0]), r2, r3], dim=1)
        y = torch.cat([self.decoderBlock_1(fused), x3], dim=1)
        y = torch.cat([self.decoderBlock_2(y), x2], dim=1)
        y = torch.cat([self.decoderBlock_3(y), x1], dim=1)
        return self.segmentation_head(y)


def _load_state_dict(state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local checkpoint (``weights_only``), unwrap ``state_dict``/``model`` and strip ``module.`` prefixes."""
    sd = state_dict_or_path
    if isinstance(sd, (str, os.PathLike)):
        sd = torch.load(sd, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
            break
    sd = OrderedDict(sd)
    consume_prefix_in_state_dict_if_present(sd, "module.")
    return sd


def load_official_state_dict(
    model: LeViTUNet, state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike
) -> dict[str, int]:
    """Load a checkpoint of the official LeViT-UNet code into ``model`` with ``strict=True``.

    Accepts a local path or a state dict, optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` and with
    ``module.`` (DataParallel) prefixes. The duplicate ``blocks.*`` keys of the official 192 model are dropped when
    ``block_*`` keys exist.

    Returns:
        a report with the number of ``loaded`` keys and of ``dropped_duplicates``.

    Raises:
        RuntimeError: when keys or shapes do not match ``model`` (e.g. another variant, class count or img_size).
    """
    sd = _load_state_dict(state_dict_or_path)
    dropped = 0
    if any(k.startswith("block_") for k in sd):
        duplicates = [k for k in sd if k.startswith("blocks.")]
        for k in duplicates:
            del sd[k]
        dropped = len(duplicates)
    # strict load_state_dict, not copy_model_state: that one silently skips missing or mis-shaped keys
    model.load_state_dict(sd, strict=True)
    report = {"loaded": len(sd), "dropped_duplicates": dropped}
    logger.info("Loaded official LeViT-UNet checkpoint: %s", report)
    return report


def load_levit_imagenet(model: LeViTUNet, path_or_state_dict: Mapping[str, torch.Tensor] | str | os.PathLike) -> int:
    """Initialise the encoder of ``model`` from a local ImageNet LeViT checkpoint (``checkpoint["model"]``).

    ``patch_embed.2/.4/.6`` go to ``cnn_b2.0/cnn_b3.0/cnn_b4.0`` and ``blocks.k`` to whichever of ``block_1/2/3``
    holds index ``k``. The 3-channel ``patch_embed.0`` and the classifier heads are dropped, so ``cnn_b1`` stays random.
    Only keys whose shape equals the model's are loaded (the attention biases only match at ``img_size=224``).

    Returns:
        the number of loaded keys.
    """
    sd = _load_state_dict(path_or_state_dict)
    stage_of = {k: name for name in ("block_1", "block_2", "block_3") for k in getattr(model, name)._modules}
    stem = {"2": "cnn_b2.0", "4": "cnn_b3.0", "6": "cnn_b4.0"}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = re.fullmatch(r"(patch_embed|blocks)\.(\d+)\.(.+)", key)
        if match is None:
            continue
        prefix, index, rest = match.groups()
        if prefix == "patch_embed":
            new_prefix = stem.get(index)
        else:
            new_prefix = f"{stage_of[index]}.{index}" if index in stage_of else None
        if new_prefix is not None:
            renamed[f"{new_prefix}.{rest}"] = value
    # copies only the keys the model has with an equal shape and leaves the rest of the model as it is
    _, updated, _ = copy_model_state(model, renamed, inplace=True)
    logger.info("Loaded %d of %d ImageNet LeViT keys into the encoder.", len(updated), len(sd))
    return len(updated)
