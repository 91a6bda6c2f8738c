"""UniverSeg network: official parameter count and key layout, shapes, support-order invariance, CrossConv2d
against a loop, and the official-checkpoint loader against an independent functional forward written from the spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from custom_components.networks.universeg import CrossBlock, CrossConv2d, UniverSeg

# ---- the official state-dict layout, written out from the spec (key -> shape) -----------------------------------


def official_layout(width: int = 64) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    cross_in = {"enc_blocks.0": 3, "enc_blocks.1": 128, "enc_blocks.2": 128, "enc_blocks.3": 128,
                "dec_blocks.0": 256, "dec_blocks.1": 256, "dec_blocks.2": 256}
    for block, cin in cross_in.items():
        shapes[f"{block}.cross.cross_conv.weight"] = (width, cin, 3, 3)
        shapes[f"{block}.cross.cross_conv.bias"] = (width,)
        for branch in ("target", "support"):
            shapes[f"{block}.{branch}.vmapped.conv.weight"] = (width, width, 3, 3)
            shapes[f"{block}.{branch}.vmapped.conv.bias"] = (width,)
    shapes["out_conv.conv.weight"] = (1, width, 1, 1)
    shapes["out_conv.conv.bias"] = (1,)
    return shapes


def random_official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_layout().items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5 if len(shape) == 4 else 0.1 * torch.randn(
            shape, generator=g)
    return sd


# ---- independent functional forward: plain torch ops on the official tensors, written from the spec -------------


def reference_forward(sd: dict[str, torch.Tensor], query: torch.Tensor, s_img: torch.Tensor, s_lab: torch.Tensor):
    """Loop over batch and support items; lists of 4-D tensors (C, H, W) per item, no 5-D tricks."""
    out = []
    for b in range(query.shape[0]):
        q = query[b]  # (1, H, W)
        sup = [torch.cat([s_img[b, i], s_lab[b, i]], 0) for i in range(s_img.shape[1])]  # image first

        def block(name, q, sup, need_support=True):
            w, bias = sd[f"{name}.cross.cross_conv.weight"], sd[f"{name}.cross.cross_conv.bias"]
            z = [F.conv2d(torch.cat([q, s], 0)[None], w, bias, padding=1)[0] for s in sup]  # query first, no act
            zm = torch.stack(z).mean(0)
            q_new = F.leaky_relu(F.conv2d(zm[None], sd[f"{name}.target.vmapped.conv.weight"],
                                          sd[f"{name}.target.vmapped.conv.bias"], padding=1)[0], 0.01)
            s_new = [F.leaky_relu(F.conv2d(zi[None], sd[f"{name}.support.vmapped.conv.weight"],
                                           sd[f"{name}.support.vmapped.conv.bias"], padding=1)[0], 0.01) for zi in z]
            return q_new, s_new

        skips = []
        for i in range(4):
            q, sup = block(f"enc_blocks.{i}", q, sup)
            if i < 3:
                skips.append((q, sup))
                q = F.max_pool2d(q[None], 2, 2)[0]
                sup = [F.max_pool2d(s[None], 2, 2)[0] for s in sup]

        def up(x):
            return F.interpolate(x[None], scale_factor=2, mode="bilinear", align_corners=True)[0]

        for i in range(3):
            q_skip, s_skip = skips.pop()
            q = torch.cat([up(q), q_skip], 0)
            sup = [torch.cat([up(s), sk], 0) for s, sk in zip(sup, s_skip)]
            q, sup = block(f"dec_blocks.{i}", q, sup)
        out.append(F.conv2d(q[None], sd["out_conv.conv.weight"], sd["out_conv.conv.bias"])[0])
    return torch.stack(out)


def _episode(b=2, s=5, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, 1, size, size, generator=g)
    si = torch.rand(b, s, 1, size, size, generator=g)
    sl = (torch.rand(b, s, 1, size, size, generator=g) > 0.5).float()
    return q, si, sl


def test_official_parameter_count_and_keys():
    net = UniverSeg()
    assert sum(p.numel() for p in net.parameters()) == 1_182_785
    sd = net.state_dict()
    assert len(sd) == 44
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_layout()
    assert not list(net.buffers())


def test_shapes_and_configurable_widths():
    net = UniverSeg(encoder_channels=(8, 16, 16, 32), decoder_channels=(16, 16, 8))
    q, si, sl = _episode(b=3, s=2, size=24)
    with torch.no_grad():
        assert net(q, si, sl).shape == (3, 1, 24, 24)
    net2 = UniverSeg(encoder_channels=(8, 8, 8), decoder_channels=(8, 8))
    q, si, sl = _episode(b=1, s=1, size=20)
    with torch.no_grad():
        assert net2(q, si, sl).shape == (1, 1, 20, 20)
    with pytest.raises(ValueError, match="multiples of 4"):
        net2(torch.rand(1, 1, 18, 18), torch.rand(1, 1, 1, 18, 18), torch.rand(1, 1, 1, 18, 18))
    with pytest.raises(ValueError, match="decoder"):
        UniverSeg(encoder_channels=(8, 8, 8), decoder_channels=(8,))


def test_support_order_invariance_and_support_dependence():
    torch.manual_seed(0)
    net = UniverSeg(encoder_channels=(16,) * 4, decoder_channels=(16,) * 3).eval()
    q, si, sl = _episode(b=2, s=6)
    with torch.no_grad():
        y = net(q, si, sl)
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        assert torch.allclose(net(q, si[:, perm], sl[:, perm]), y, atol=1e-5)
        # another support (other labels) gives another output: no collapse by construction
        assert (net(q, si, 1 - sl) - y).abs().max() > 1e-4


def test_packed_episode_equals_three_inputs_and_errors():
    torch.manual_seed(0)
    net = UniverSeg(encoder_channels=(8,) * 4, decoder_channels=(8,) * 3).eval()
    q, si, sl = _episode(b=2, s=3)
    with torch.no_grad():
        assert torch.equal(net(UniverSeg.pack(q, si, sl)), net(q, si, sl))
    with pytest.raises(ValueError, match="packed episode"):
        net(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="empty"):
        net(q, si[:, :0], sl[:, :0])
    with pytest.raises(ValueError, match="both"):
        net(q, si)


def test_cross_conv_matches_loop():
    torch.manual_seed(0)
    conv = CrossConv2d((3, 2), 5)
    x, y = torch.randn(2, 4, 3, 9, 7), torch.randn(2, 3, 2, 9, 7)
    out = conv(x, y)
    assert out.shape == (2, 4, 3, 5, 9, 7)
    for b in range(2):
        for i in range(4):
            for j in range(3):
                ref = F.conv2d(torch.cat([x[b, i], y[b, j]], 0)[None], conv.weight, conv.bias, padding=1)[0]
                assert torch.allclose(out[b, i, j], ref, atol=1e-5)


def test_cross_block_equations():
    torch.manual_seed(0)
    blk = CrossBlock((4, 6), 8)
    q, s = torch.randn(2, 1, 4, 8, 8), torch.randn(2, 3, 6, 8, 8)
    q_out, s_out = blk(q, s)
    assert q_out.shape == (2, 1, 8, 8, 8) and s_out.shape == (2, 3, 8, 8, 8)
    z = blk.cross.cross_conv(q, s)[:, 0]
    tq = F.leaky_relu(blk.target.vmapped.conv(z.mean(1)), 0.01)
    assert torch.allclose(q_out[:, 0], tq, atol=1e-5)
    ts = F.leaky_relu(blk.support.vmapped.conv(z[:, 1]), 0.01)
    assert torch.allclose(s_out[:, 1], ts, atol=1e-5)


def test_official_checkpoint_loader_matches_reference(tmp_path):
    sd = random_official_state_dict()
    path = tmp_path / "universeg_v1_nf64_ss64_STA.pt"
    torch.save(sd, path)
    net = UniverSeg.from_official_checkpoint(path).eval()
    q, si, sl = _episode(b=2, s=5, size=32)
    with torch.no_grad():
        got = net(q, si, sl)
        ref = reference_forward(sd, q, si, sl)
    assert got.shape == ref.shape == (2, 1, 32, 32)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    # wrapped and DataParallel-prefixed checkpoints load the same weights
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    net2 = UniverSeg.from_official_checkpoint(tmp_path / "wrapped.pt").eval()
    with torch.no_grad():
        assert torch.equal(net2(q, si, sl), got)


def test_official_checkpoint_loader_reports_every_problem(tmp_path):
    sd = random_official_state_dict()
    del sd["out_conv.conv.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["enc_blocks.0.cross.cross_conv.weight"] = torch.zeros(64, 4, 3, 3)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError) as e:
        UniverSeg.from_official_checkpoint(tmp_path / "bad.pt")
    msg = str(e.value)
    assert "missing: out_conv.conv.bias" in msg and "unexpected: extra.weight" in msg
    assert "enc_blocks.0.cross.cross_conv.weight: checkpoint (64, 4, 3, 3) vs model (64, 3, 3, 3)" in msg
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        UniverSeg.from_official_checkpoint(tmp_path / "absent.pt")


def test_official_package_if_available(tmp_path):
    """Optional: against the git-installed official package and a user's weight file (skipped when absent)."""
    universeg = pytest.importorskip("universeg")
    import os

    weights = os.environ.get("UNIVERSEG_WEIGHTS")
    if not weights or not os.path.isfile(weights):
        pytest.skip("set UNIVERSEG_WEIGHTS to a local copy of the official weights")
    official = universeg.universeg(pretrained=False)
    official.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    ours = UniverSeg.from_official_checkpoint(weights)
    q, si, sl = _episode(b=1, s=4, size=128)
    with torch.no_grad():
        assert torch.allclose(ours(q, si, sl), official.eval()(q, si, sl), atol=1e-5)


def test_torchscript_script_and_trace():
    torch.manual_seed(0)
    net = UniverSeg(encoder_channels=(8,) * 4, decoder_channels=(8,) * 3).eval()
    q, si, sl = _episode(b=1, s=2, size=16)
    packed = UniverSeg.pack(q, si, sl)
    with torch.no_grad():
        ref = net(q, si, sl)
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted(q, si, sl), ref, atol=1e-6)
        assert torch.allclose(scripted(packed), ref, atol=1e-6)
