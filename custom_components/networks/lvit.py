"""LViT: Language meets Vision Transformer, a text-guided 2D segmentation network.

Li, Wang, Zhang, Yang, Chen, Liu, Zheng, Zheng, Song, "LViT: Language meets Vision Transformer in Medical Image
Segmentation", IEEE Transactions on Medical Imaging 43(1), 2023, https://arxiv.org/abs/2206.14718 (official
repository HUANGLIZI/LViT). This module follows what the official code computes (see ``specs/LVIT.md`` §2):

- a U-shaped CNN (``inc``: one conv-BN-ReLU, four max-pool + 2x conv-BN-ReLU downs, four nearest-upsample ups
  whose skips pass through a :class:`~custom_components.networks.plam.PLAM` gate, a 1x1 head);
- a U-shaped ViT branch: at each of the four CNN scales ``x_l`` a patch embedding (patch 16, 8, 4, 2, so every level
  has ``(img_size/16)^2`` tokens) and one pre-LN transformer block; levels 2-4 concatenate a token-axis conv of their
  output with the previous level's tokens (``y_l = cat[CTBN(z_l), y_{l-1}]``); the up path adds a token-axis conv of
  the deeper level (``u_l = Block(y_l) + CTBN2(u_{l+1})``); each ``u_l`` is reshaped, upsampled to ``x_l``'s size,
  passed through a 1x1 conv-BN-ReLU and **added** to ``x_l`` before the decoder;
- the text: four token-axis Conv1d layers (``text_dim -> 512 -> 256 -> 128 -> 64``, no activation), whose 64-wide
  output is mapped from ``text_len`` to ``n_tokens`` tokens (``Conv1d(text_len, n_tokens) + BN + ReLU``) and added
  to the first ViT level's embedding (``text_levels=(1,)``, the official behaviour; ``(1, 2, 3, 4)`` adds ``t_l`` at
  every level, as the paper figure suggests).

How it is computed (same function, same parameters; equal to the plain formulation up to float rounding, checked
by ``tests/test_network_speed_equivalence.py``): the reconstruction's 1x1 conv, BN and ReLU act per pixel and so run
on the ``g x g`` token grid before the nearest upsampling, which becomes a broadcast add onto ``x_l``; the first
decoder convolution is split along its input channels, and its half on the nearest-upsampled deeper map is one
stride-2 transposed convolution of the map itself (16 instead of 36 multiply-adds per pixel of that map); attention
uses ``scaled_dot_product_attention``.

Only live modules are built: 29,908,033 parameters with the official settings (224, 10 tokens of 768-d text),
29,318,209 with ``text_dim=384``. The network returns logits (the official model applies the sigmoid inside for one
class; here the loss and the post-processing do).

Shapes: ``image [B, in_channels, img_size, img_size]``, ``text [B, text_len, text_dim]`` (or ``None``: the text is
not added, as ``use_text=False``) -> logits ``[B, out_channels, img_size, img_size]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .plam import PLAM

__all__ = ["LViT", "LViTBlock", "count_forward_parameters"]


def _cbr(cin: int, cout: int) -> nn.Sequential:
    """Conv3x3 (bias) + BN2d + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _TokenConv(nn.Module):
    """Conv1d (k3, pad 1) + BN1d + ReLU along the token axis: ``[B, N, Cin] -> [B, N, Cout]`` (channels = features)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x.transpose(1, 2)))).transpose(1, 2)


class _TextToTokens(nn.Module):
    """CTBN3: Conv1d(text_len -> n_tokens, k3) + BN1d + ReLU; the text tokens are the channels:
    ``[B, text_len, C] -> [B, n_tokens, C]``."""

    def __init__(self, text_len: int, n_tokens: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(text_len, n_tokens, 3, padding=1)
        self.norm = nn.BatchNorm1d(n_tokens)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(t)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # softmax(q k^T * scale) v, fused
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    """fc1 (C -> 4C), GELU, dropout, fc2 (4C -> C), GELU (official), dropout; xavier-uniform weights, N(0, 1e-6) biases."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.gelu(self.fc2(self.drop(F.gelu(self.fc1(x))))))


class LViTBlock(nn.Module):
    """One pre-LN transformer block (8-head self-attention and MLP, each with a residual): ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = _Mlp(dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    """Conv2d(C, C, kernel = stride = patch) -> ``[B, N, C]`` + learned position embedding (zero init) -> dropout."""

    def __init__(self, dim: int, patch: int, n_tokens: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(x).flatten(2).transpose(1, 2) + self.pos)


class _Reconstruct(nn.Module):
    """Tokens ``[B, N, C]`` -> ``[B, C, g, g]`` -> nearest upsample x``scale`` -> Conv1x1 (bias) + BN + ReLU.

    The 1x1 convolution, the BN (whose batch statistics of a nearest-upsampled map are those of the map itself) and
    the ReLU act per pixel, so they commute with the nearest upsampling: :meth:`forward` computes them on the
    ``g x g`` grid and returns ``[B, C, g, g]``; :func:`_add_upsampled` adds it, upsampled, onto the CNN map. Only
    the running variance depends on the pixel count (its unbiased correction), which is taken at full size.
    """

    def __init__(self, dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(dim, dim, 1)
        self.norm = nn.BatchNorm2d(dim)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """``self.norm`` applied to the ``scale``-times nearest-upsampled ``x``, at ``x``'s size."""
        bn = self.norm
        running_mean, running_var, tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
        if not bn.training and running_mean is not None and running_var is not None:
            return bn(x)  # per-channel affine with the running statistics
        var, mean = torch.var_mean(x, dim=[0, 2, 3], unbiased=False)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + bn.eps)[None, :, None, None]
        if bn.weight is not None and bn.bias is not None:
            y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        if bn.training and running_mean is not None and running_var is not None and tracked is not None:
            with torch.no_grad():
                tracked.add_(1)
                momentum = bn.momentum
                factor = 1.0 / float(tracked.item()) if momentum is None else momentum
                n = x.shape[0] * x.shape[2] * x.shape[3] * self.scale * self.scale  # pixels of the upsampled map
                running_mean.mul_(1.0 - factor).add_(mean.detach() * factor)
                running_var.mul_(1.0 - factor).add_(var.detach() * (factor * n / max(n - 1, 1)))
        return y

    def forward(self, u: torch.Tensor, grid: int) -> torch.Tensor:
        x = u.transpose(1, 2).reshape(u.shape[0], u.shape[2], grid, grid)
        return torch.relu(self._norm(self.conv(x)))


def _add_upsampled(x: torch.Tensor, r: torch.Tensor, scale: int) -> torch.Tensor:
    """``x + nearest_upsample(r, scale)`` without materialising the upsampled ``r`` (a broadcast add)."""
    b, c, g = r.shape[0], r.shape[1], r.shape[2]
    out = x.reshape(b, c, g, scale, g, scale) + r.reshape(b, c, g, 1, g, 1)
    return out.reshape(x.shape)


def _up2_taps(k: torch.Tensor, dim: int) -> torch.Tensor:
    """3 taps ``(k0, k1, k2)`` along ``dim`` -> the 4 taps ``(k2, k1 + k2, k0 + k1, k0)`` of the x2 transposed
    kernel."""
    k0, k1, k2 = k.unbind(dim)
    return torch.stack([k2, k1 + k2, k0 + k1, k0], dim)


def _conv3x3_of_nearest_up2(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv2d(nearest_upsample(u, 2), weight, padding=1)`` (3x3 kernel, no bias) computed from ``u`` directly.

    Output row ``r`` reads upsampled rows ``r - 1 .. r + 1``, i.e. input rows ``(r - 1) // 2 .. (r + 1) // 2``:
    input row ``i`` reaches output rows ``2i - 1 .. 2i + 2`` with the summed kernel rows ``w2, w1 + w2, w0 + w1,
    w0`` (likewise for columns). That is one stride-2 transposed convolution of ``u`` with a 4x4 kernel (padding 1):
    16 instead of 36 multiply-adds per input-output channel pair and input pixel, and neither the upsampled map
    nor its gradient is built. The zero padding of the upsampled map is the transposed convolution's border.
    """
    kernel = _up2_taps(_up2_taps(weight, 2), 3).transpose(0, 1).contiguous()  # [Ci, Co, 4, 4]
    return F.conv_transpose2d(u, kernel, stride=2, padding=1)


class _Up(nn.Module):
    """Nearest x2 of the deeper map ``u``; ``cat[PLAM(skip), u]``; two conv-BN-ReLU.

    The first convolution is split along its input channels: the skip half as a 3x3 convolution, the upsampled half
    on ``u``'s grid (:func:`_conv3x3_of_nearest_up2`), so neither the upsampled map nor the concatenation is built.
    """

    def __init__(self, cin: int, cout: int, skip_channels: int, plam_sigmoid: bool = False) -> None:
        super().__init__()
        self.plam = PLAM(skip_channels, sigmoid=plam_sigmoid)
        self.convs = nn.Sequential(_cbr(cin, cout), _cbr(cout, cout))
        self.skip_channels = skip_channels

    def forward(self, u: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        first = self.convs[0]
        conv = first[0]
        cs = self.skip_channels
        x = F.conv2d(self.plam(skip), conv.weight[:, :cs].contiguous(), conv.bias, padding=1)
        x = x + _conv3x3_of_nearest_up2(u, conv.weight[:, cs:])
        return self.convs[1](first[2](first[1](x)))


class LViT(nn.Module):
    """LViT (Li et al., IEEE TMI 2023): U-shaped CNN + U-shaped ViT with text entering the ViT, PLAM on the skips.

    Args:
        in_channels: image channels (official: 3, an 8-bit BGR image divided by 255).
        out_channels: classes (1 for binary segmentation; logits are returned).
        img_size: square input size, a multiple of 16; the token grid is ``img_size / 16`` squared (14x14 at 224).
        text_len: number of text token vectors (official: the first 10 words).
        text_dim: width of a text vector (official BERT-base: 768; the bundle's MiniLM: 384).
        base_channels: CNN width of the first level (official 64; the level widths are ``b, 2b, 4b, 8b, 8b``).
        heads: attention heads of every ViT block (8).
        dropout: ViT embedding and MLP dropout (0.1).
        use_text: ``False`` builds the same network whose text is never added (the paper's "without text" variant).
        text_levels: ViT levels the text enters (official: ``(1,)``; ``(1, 2, 3, 4)``: every level).
        plam_sigmoid: sigmoid on the PLAM gate (official code: ``False``).

    Shapes: ``image [B, in_channels, img_size, img_size]``, ``text [B, text_len, text_dim]`` or ``None``
    -> ``[B, out_channels, img_size, img_size]`` logits.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        img_size: int = 224,
        text_len: int = 10,
        text_dim: int = 384,
        base_channels: int = 64,
        heads: int = 8,
        dropout: float = 0.1,
        use_text: bool = True,
        text_levels: Sequence[int] = (1,),
        plam_sigmoid: bool = False,
    ) -> None:
        super().__init__()
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16 (patches of 16 at full resolution), got {img_size}")
        levels = sorted({int(lv) for lv in text_levels})
        if not levels or any(lv not in (1, 2, 3, 4) for lv in levels):
            raise ValueError(f"text_levels must be a non-empty subset of (1, 2, 3, 4), got {text_levels}")
        b = int(base_channels)
        widths = [b, 2 * b, 4 * b, 8 * b]  # ViT / skip widths of levels 1..4
        self.img_size, self.text_len, self.text_dim = int(img_size), int(text_len), int(text_dim)
        self.grid = self.img_size // 16
        n_tokens = self.grid * self.grid
        self.n_tokens = n_tokens
        self.use_text = bool(use_text)
        self.text_levels = levels
        self._text_at = [lv in levels for lv in (1, 2, 3, 4)]

        # CNN encoder
        self.inc = _cbr(in_channels, b)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), _cbr(b, 2 * b), _cbr(2 * b, 2 * b))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), _cbr(2 * b, 4 * b), _cbr(4 * b, 4 * b))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), _cbr(4 * b, 8 * b), _cbr(8 * b, 8 * b))
        self.down4 = nn.Sequential(nn.MaxPool2d(2), _cbr(8 * b, 8 * b), _cbr(8 * b, 8 * b))
        # text chain T4..T1 (no activation): text_dim -> 8b -> 4b -> 2b -> b along the feature axis
        self.text4 = nn.Conv1d(text_dim, 8 * b, 3, padding=1)
        self.text3 = nn.Conv1d(8 * b, 4 * b, 3, padding=1)
        self.text2 = nn.Conv1d(4 * b, 2 * b, 3, padding=1)
        self.text1 = nn.Conv1d(2 * b, b, 3, padding=1)
        self.text_to_tokens = nn.ModuleList(
            [_TextToTokens(text_len, n_tokens) if lv in levels else nn.Identity() for lv in (1, 2, 3, 4)]
        )
        # down ViT
        patches = [16, 8, 4, 2]
        self.embed = nn.ModuleList([_PatchEmbed(c, p, n_tokens, dropout) for c, p in zip(widths, patches)])
        self.down_blocks = nn.ModuleList([LViTBlock(c, heads, dropout) for c in widths])
        self.down_ctbn = nn.ModuleList([nn.Identity()] + [_TokenConv(c, c // 2) for c in widths[1:]])
        # up ViT
        self.up_blocks = nn.ModuleList([LViTBlock(c, heads, dropout) for c in widths])
        self.up_ctbn = nn.ModuleList([_TokenConv(2 * c, c) for c in widths[:3]])  # CTBN2 of levels 1..3
        self.reconstruct = nn.ModuleList([_Reconstruct(c, p) for c, p in zip(widths, patches)])
        # CNN decoder
        self.up4 = _Up(16 * b, 4 * b, 8 * b, plam_sigmoid)
        self.up3 = _Up(8 * b, 2 * b, 4 * b, plam_sigmoid)
        self.up2 = _Up(4 * b, b, 2 * b, plam_sigmoid)
        self.up1 = _Up(2 * b, b, b, plam_sigmoid)
        self.outc = nn.Conv2d(b, out_channels, 1)

    def _text_features(self, text: torch.Tensor) -> list[torch.Tensor]:
        """``[B, text_len, text_dim]`` -> ``[t1, t2, t3, t4]`` with widths ``b, 2b, 4b, 8b`` (``[B, text_len, C]``)."""
        t4 = self.text4(text.transpose(1, 2))
        t3 = self.text3(t4)
        t2 = self.text2(t3)
        t1 = self.text1(t2)
        return [t1.transpose(1, 2), t2.transpose(1, 2), t3.transpose(1, 2), t4.transpose(1, 2)]

    def forward(self, image: torch.Tensor, text: Optional[torch.Tensor] = None) -> torch.Tensor:
        if image.shape[-1] != self.img_size or image.shape[-2] != self.img_size:
            raise ValueError(
                f"LViT was built for {self.img_size}x{self.img_size} images, got {list(image.shape)} "
                "(resize the input or set img_size)"
            )
        texts: list[torch.Tensor] = []
        if text is not None and self.use_text:
            if text.dim() != 3 or text.shape[1] != self.text_len or text.shape[2] != self.text_dim:
                raise ValueError(
                    f"text must be [B, {self.text_len}, {self.text_dim}] token vectors, got {list(text.shape)}"
                )
            texts = self._text_features(text.to(image.dtype))

        has_text = len(texts) > 0
        # CNN encoder interleaved with the down ViT (unrolled: TorchScript indexes module lists by constants only)
        x1 = self.inc(image)
        e1 = self.embed[0](x1)
        if has_text and self._text_at[0]:
            e1 = e1 + self.text_to_tokens[0](texts[0])
        y1 = self.down_blocks[0](e1)
        x2 = self.down1(x1)
        e2 = self.embed[1](x2)
        if has_text and self._text_at[1]:
            e2 = e2 + self.text_to_tokens[1](texts[1])
        y2 = torch.cat([self.down_ctbn[1](self.down_blocks[1](e2)), y1], dim=2)
        x3 = self.down2(x2)
        e3 = self.embed[2](x3)
        if has_text and self._text_at[2]:
            e3 = e3 + self.text_to_tokens[2](texts[2])
        y3 = torch.cat([self.down_ctbn[2](self.down_blocks[2](e3)), y2], dim=2)
        x4 = self.down3(x3)
        e4 = self.embed[3](x4)
        if has_text and self._text_at[3]:
            e4 = e4 + self.text_to_tokens[3](texts[3])
        y4 = torch.cat([self.down_ctbn[3](self.down_blocks[3](e4)), y3], dim=2)
        x5 = self.down4(x4)
        # up ViT: u4 = Block(y4); u_l = Block(y_l) + CTBN2(u_{l+1}); reconstruct and add onto the CNN skips
        u4 = self.up_blocks[3](y4)
        u3 = self.up_blocks[2](y3) + self.up_ctbn[2](u4)
        u2 = self.up_blocks[1](y2) + self.up_ctbn[1](u3)
        u1 = self.up_blocks[0](y1) + self.up_ctbn[0](u2)
        skips = [
            _add_upsampled(x1, self.reconstruct[0](u1, self.grid), self.reconstruct[0].scale),
            _add_upsampled(x2, self.reconstruct[1](u2, self.grid), self.reconstruct[1].scale),
            _add_upsampled(x3, self.reconstruct[2](u3, self.grid), self.reconstruct[2].scale),
            _add_upsampled(x4, self.reconstruct[3](u4, self.grid), self.reconstruct[3].scale),
        ]
        xs = [x1, x2, x3, x4, x5]

        d = self.up4(xs[4], skips[3])
        d = self.up3(d, skips[2])
        d = self.up2(d, skips[1])
        d = self.up1(d, skips[0])
        return self.outc(d)


def count_forward_parameters(model: nn.Module, *inputs) -> int:
    """Number of parameters that receive a gradient from one forward/backward pass (the "live" parameters)."""
    for p in model.parameters():
        p.grad = None
    out = model(*inputs)
    out.float().sum().backward()
    n = sum(p.numel() for p in model.parameters() if p.grad is not None)
    for p in model.parameters():
        p.grad = None
    return n
