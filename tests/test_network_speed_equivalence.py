"""The fast formulations of LViT, UniverSeg and LeViT-UNet against plain reference forwards written in this file.

Each network computes some parts in a cheaper but equivalent way (UniverSeg: the query/support halves of the cross
convolution once per element instead of once per pair, the last block on the support mean; LViT: the token
reconstruction on the token grid, the convolution of a nearest-upsampled map as a transposed convolution, fused
attention; LeViT-UNet: the convolution of a bilinear-upsampled map with its channel mixing at the input resolution,
fused attention with the bias as mask). The references below are the straightforward formulations (the networks'
code before that change), run on the same modules and weights.

Compared: outputs, gradients of every input and every parameter, and the BN running statistics after a training
step, in train and eval mode, to 1e-5. The comparison runs in float64: in float32 the plain formulation itself moves
by more than 1e-5 under rounding at these depths (a ReLU, LeakyReLU or max-pool decision flips when a value sits at
the kink), so float32 differences say nothing about the formulation; float64 leaves only rounding of ~1e-15.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from custom_components.networks import LeViTUNet, LViT, UniverSeg
from custom_components.networks.levit_unet import Attention, AttentionSubsample, Residual, _conv3x3_of_bilinear_up2
from custom_components.networks.lvit import _conv3x3_of_nearest_up2

DTYPE = torch.float64
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere (LeViT's zero-initialised BN weights would hide its residual branches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bn.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _run(net: nn.Module, forward, inputs: list[torch.Tensor], train: bool):
    """Output, input gradients, parameter gradients and buffers after one forward/backward of ``forward``."""
    net.train(train)
    net.zero_grad(set_to_none=True)
    xs = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = forward(net, *xs)
    weights = torch.cos(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape)
    (out * weights).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    return out.detach(), [x.grad for x in xs], grads, {n: b.clone() for n, b in net.named_buffers()}


def _assert_equivalent(net: nn.Module, reference, inputs: list[torch.Tensor]) -> None:
    for train in (True, False):
        fast_net, ref_net = copy.deepcopy(net), copy.deepcopy(net)
        fast = _run(fast_net, lambda m, *x: m(*x), inputs, train)
        ref = _run(ref_net, reference, inputs, train)
        torch.testing.assert_close(fast[0], ref[0], **TOL, msg=f"output (train={train})")
        for i, (a, b) in enumerate(zip(fast[1], ref[1])):
            torch.testing.assert_close(a, b, **TOL, msg=f"gradient of input {i} (train={train})")
        assert fast[2].keys() == ref[2].keys()
        for name in ref[2]:
            a, b = fast[2][name], ref[2][name]
            assert (a is None) == (b is None), name
            if b is not None:
                torch.testing.assert_close(a, b, **TOL, msg=f"gradient of {name} (train={train})")
        for name in ref[3]:
            torch.testing.assert_close(fast[3][name], ref[3][name], **TOL, msg=f"buffer {name} (train={train})")


# ---- LViT -------------------------------------------------------------------------------------------------------


def _plain_attention_block(blk, x):
    a = blk.attn
    h = blk.norm1(x)
    b, n, c = h.shape
    qkv = a.qkv(h).reshape(b, n, 3, a.heads, c // a.heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax((qkv[0] @ qkv[1].transpose(-2, -1)) * a.scale, dim=-1)
    x = x + a.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, c))
    return x + blk.mlp(blk.norm2(x))


def _plain_plam(p, x):
    a = torch.relu(p.conv_avg(x)).mean(dim=1, keepdim=True)
    m = torch.relu(p.conv_max(x)).amax(dim=1, keepdim=True)
    g = p.mlp(torch.cat([a, m, a + m], dim=1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return (torch.sigmoid(g) if p.sigmoid else g) * x


def _plain_reconstruct(r, u, grid):
    x = u.transpose(1, 2).reshape(u.shape[0], u.shape[2], grid, grid)
    x = F.interpolate(x, scale_factor=float(r.scale), mode="nearest")
    return torch.relu(r.norm(r.conv(x)))


def _plain_up(up, u, skip):
    u = F.interpolate(u, scale_factor=2.0, mode="nearest")
    return up.convs(torch.cat([_plain_plam(up.plam, skip), u], dim=1))


def lvit_reference(net: LViT, image, text):
    t4 = net.text4(text.transpose(1, 2))
    t3 = net.text3(t4)
    t2 = net.text2(t3)
    t1 = net.text1(t2)
    texts = [t.transpose(1, 2) for t in (t1, t2, t3, t4)]
    xs = [net.inc(image)]
    for down in (net.down1, net.down2, net.down3, net.down4):
        xs.append(down(xs[-1]))
    ys = []
    for lv in range(4):
        e = net.embed[lv](xs[lv])
        if net._text_at[lv]:
            e = e + net.text_to_tokens[lv](texts[lv])
        z = _plain_attention_block(net.down_blocks[lv], e)
        ys.append(z if lv == 0 else torch.cat([net.down_ctbn[lv](z), ys[-1]], dim=2))
    us = [None, None, None, _plain_attention_block(net.up_blocks[3], ys[3])]
    for lv in (2, 1, 0):
        us[lv] = _plain_attention_block(net.up_blocks[lv], ys[lv]) + net.up_ctbn[lv](us[lv + 1])
    skips = [xs[lv] + _plain_reconstruct(net.reconstruct[lv], us[lv], net.grid) for lv in range(4)]
    d = _plain_up(net.up4, xs[4], skips[3])
    d = _plain_up(net.up3, d, skips[2])
    d = _plain_up(net.up2, d, skips[1])
    d = _plain_up(net.up1, d, skips[0])
    return net.outc(d)


@pytest.mark.parametrize("text_levels,plam_sigmoid", [((1,), False), ((1, 2, 3, 4), True)])
def test_lvit_matches_plain_reference(text_levels, plam_sigmoid):
    torch.manual_seed(0)
    net = LViT(img_size=64, text_len=5, text_dim=12, base_channels=8, dropout=0.0, text_levels=text_levels,
               plam_sigmoid=plam_sigmoid)
    net = _randomize(net.to(DTYPE))
    image, text = torch.rand(2, 3, 64, 64, dtype=DTYPE), torch.randn(2, 5, 12, dtype=DTYPE)
    _assert_equivalent(net, lvit_reference, [image, text])


def test_lvit_reconstruct_running_stats_with_cumulative_momentum():
    """``momentum=None`` (cumulative average) and the unbiased count of the upsampled map, over two steps."""
    torch.manual_seed(0)
    net = _randomize(LViT(img_size=32, text_len=3, text_dim=8, base_channels=8, dropout=0.0).to(DTYPE))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    image, text = torch.rand(2, 3, 32, 32, dtype=DTYPE), torch.randn(2, 3, 8, dtype=DTYPE)
    fast, ref = copy.deepcopy(net).train(), copy.deepcopy(net).train()
    for _ in range(2):
        fast(image, text)
        lvit_reference(ref, image, text)
    for (name, a), b in zip(fast.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, **TOL, msg=name)


def test_lvit_torchscript_train_and_eval():
    torch.manual_seed(0)
    net = LViT(img_size=32, text_len=3, text_dim=8, base_channels=8, dropout=0.0)
    scripted = torch.jit.script(copy.deepcopy(net))
    image, text = torch.rand(2, 3, 32, 32), torch.randn(2, 3, 8)
    for train in (True, False):
        torch.testing.assert_close(scripted.train(train)(image, text), net.train(train)(image, text))
    for (name, a), b in zip(net.named_buffers(), scripted.buffers()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (7, 4)])
def test_nearest_up2_convolution(h, w):
    u = torch.randn(2, 3, h, w, dtype=DTYPE)
    weight = torch.randn(4, 3, 3, 3, dtype=DTYPE)
    ref = F.conv2d(F.interpolate(u, scale_factor=2.0, mode="nearest"), weight, padding=1)
    torch.testing.assert_close(_conv3x3_of_nearest_up2(u, weight), ref, **TOL)


# ---- UniverSeg ----------------------------------------------------------------------------------------------------


def universeg_reference(net: UniverSeg, target, s_img, s_lab):
    """Every (query, support) pair built and convolved; the support branch of every block computed."""

    def block(blk, q, s):
        conv = blk.cross.cross_conv
        b, sn = s.shape[0], s.shape[1]
        pairs = torch.cat([q.expand(b, sn, *q.shape[2:]), s], dim=2).flatten(0, 1)
        z = F.conv2d(pairs, conv.weight, conv.bias, padding=1).unflatten(0, (b, sn))
        if blk.cross_activation:
            z = F.leaky_relu(z, 0.01)
        q_new = F.leaky_relu(blk.target.vmapped.conv(z.mean(dim=1)), 0.01).unsqueeze(1)
        s_new = F.leaky_relu(blk.support.vmapped.conv(z.flatten(0, 1)), 0.01).unflatten(0, (b, sn))
        return q_new, s_new

    def pool(x):
        return F.max_pool2d(x.flatten(0, 1), 2).unflatten(0, x.shape[:2])

    def up(x):
        return F.interpolate(x.flatten(0, 1), scale_factor=2.0, mode="bilinear", align_corners=True).unflatten(
            0, x.shape[:2])

    q, s = target.unsqueeze(1), torch.cat([s_img, s_lab], dim=2)
    skips = []
    for i, blk in enumerate(net.enc_blocks):
        q, s = block(blk, q, s)
        if i < len(net.enc_blocks) - 1:
            skips.append((q, s))
            q, s = pool(q), pool(s)
    for blk in net.dec_blocks:
        q_skip, s_skip = skips.pop()
        q, s = block(blk, torch.cat([up(q), q_skip], dim=2), torch.cat([up(s), s_skip], dim=2))
    return net.out_conv(q.squeeze(1))


@pytest.mark.parametrize("cross_activation", [False, True])
def test_universeg_matches_plain_reference(cross_activation):
    torch.manual_seed(0)
    net = _randomize(UniverSeg((8, 8, 8, 8), (8, 8, 8), cross_activation=cross_activation).to(DTYPE))
    g = torch.Generator().manual_seed(1)
    q = torch.rand(2, 1, 32, 32, generator=g, dtype=DTYPE)
    si = torch.rand(2, 3, 1, 32, 32, generator=g, dtype=DTYPE)
    sl = (torch.rand(2, 3, 1, 32, 32, generator=g) > 0.5).to(DTYPE)
    _assert_equivalent(net, universeg_reference, [q, si, sl])


# ---- LeViT-UNet ---------------------------------------------------------------------------------------------------


def _plain_levit_attention(m, x):
    b, n = x.shape[0], x.shape[1]
    if isinstance(m, Attention):
        qkv = m.qkv(x).reshape(b, n, m.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([m.key_dim, m.key_dim, m.value_dim], dim=3)
    else:
        kv = m.kv(x).reshape(b, n, m.num_heads, -1).permute(0, 2, 1, 3)
        k, v = kv.split([m.key_dim, m.value_dim], dim=3)
        q = m.q(x).reshape(b, -1, m.num_heads, m.key_dim).permute(0, 2, 1, 3)
    attn = (q @ k.transpose(-2, -1)) * m.scale + m.attention_biases[:, m.attention_bias_idxs]
    return m.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).flatten(2))


def _plain_stage(stage, x):
    for mod in stage:
        if isinstance(mod, Residual) and isinstance(mod.m, Attention):
            x = x + mod.drop_path(_plain_levit_attention(mod.m, x))
        elif isinstance(mod, AttentionSubsample):
            x = _plain_levit_attention(mod, x)
        else:
            x = mod(x)
    return x


def _plain_decoder(block, x):
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
    return block.conv2(block.conv1(x))


def levit_unet_reference(net: LeViTUNet, x):
    def up(t, size=None):
        if size is None:
            return F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=True)
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    x1 = net.cnn_b1(x)
    x2 = net.cnn_b2(x1)
    x3 = net.cnn_b3(x2)
    xc = net.cnn_b4(x3)
    t1 = _plain_stage(net.block_1, xc.flatten(2).transpose(1, 2))
    t2 = _plain_stage(net.block_2, t1)
    t3 = _plain_stage(net.block_3, t2)
    size = [net.res[0], net.res[0]]
    r2 = up(net._to_grid(t2, net.res[1]), size)
    r3 = up(up(up(net._to_grid(t3, net.res[2]))), size)
    y = torch.cat([xc, net._to_grid(t1, net.res[0]), r2, r3], dim=1)
    y = torch.cat([_plain_decoder(net.decoderBlock_1, y), x3], dim=1)
    y = torch.cat([_plain_decoder(net.decoderBlock_2, y), x2], dim=1)
    y = torch.cat([_plain_decoder(net.decoderBlock_3, y), x1], dim=1)
    return net.segmentation_head(y)


@pytest.mark.parametrize("img_size", [64, 80])
def test_levit_unet_matches_plain_reference(img_size):
    torch.manual_seed(0)
    net = _randomize(LeViTUNet("128s", out_channels=3, img_size=img_size, decoder_channels=(16, 8, 8)).to(DTYPE))
    _assert_equivalent(net, levit_unet_reference, [torch.randn(2, 1, img_size, img_size, dtype=DTYPE)])


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (5, 7), (14, 14)])
def test_bilinear_up2_convolution(h, w):
    x = torch.randn(2, 3, h, w, dtype=DTYPE)
    weight = torch.randn(4, 3, 3, 3, dtype=DTYPE)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True), weight, padding=1)
    torch.testing.assert_close(_conv3x3_of_bilinear_up2(x, weight), ref, **TOL)
    # float32 follows F.interpolate's float32 source positions and weights
    ref32 = F.conv2d(F.interpolate(x.float(), scale_factor=2.0, mode="bilinear", align_corners=True),
                     weight.float(), padding=1)
    torch.testing.assert_close(_conv3x3_of_bilinear_up2(x.float(), weight.float()), ref32, rtol=1e-5, atol=1e-5)


# ---- tools/benchmark_speed.py ---------------------------------------------------------------------------------------


def test_benchmark_speed_baseline_loader_and_numerics():
    """The benchmark's ``git show`` baseline loads and its float64 comparison runs (here HEAD against the working
    tree, on a small UniverSeg; the real comparisons run at the issue's sizes in the tool itself)."""
    import importlib.util
    import shutil
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo,
                                                      capture_output=True).returncode != 0:
        pytest.skip("no git checkout")
    spec = importlib.util.spec_from_file_location("benchmark_speed", repo / "tools" / "benchmark_speed.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    old_modules = tool.load_baseline("HEAD")
    old = old_modules["universeg"].UniverSeg((8,) * 4, (8,) * 3)
    new = UniverSeg((8,) * 4, (8,) * 3)
    new.load_state_dict(old.state_dict())
    inputs = (torch.rand(1, 1, 16, 16), torch.rand(1, 2, 1, 16, 16), (torch.rand(1, 2, 1, 16, 16) > 0.5).float())
    diffs = tool.numerics(old, new, inputs)
    assert set(diffs) == {"output", "input_grads", "param_grads"}
    assert all(v < 1e-5 for v in diffs.values()), diffs
