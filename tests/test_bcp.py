"""BCP mechanics on small deterministic examples: box mask, mixes, masked loss, EMA, pseudo labels, backbones, data."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from custom_components.engines.bcp import BCPTrainer, largest_component_per_class, load_pretrained, pseudo_labels
from custom_components.engines.ema import EMA, make_teacher
from custom_components.losses import MaskedDiceCELoss, masked_ce, masked_dice
from custom_components.networks.bcp_unet import UNet2D, load_official_unet
from custom_components.networks.vnet import VNet
from custom_components.transforms.copy_paste import BidirectionalCopyPaste, box_mask, mix


# ---------------------------------------------------------------------------------------------- mask and mixes
@pytest.mark.parametrize("shape", [(256, 256), (112, 112, 80), (96, 96, 96), (37, 50)])
def test_box_mask_has_floor_two_thirds_zeros_per_axis(shape):
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = box_mask(shape, 2 / 3, rng)
        zeros = torch.nonzero(m == 0)
        extent = (zeros.max(0).values - zeros.min(0).values + 1).tolist()
        expected = [int(np.floor(2 / 3 * s)) for s in shape]
        assert extent == expected
        assert int((m == 0).sum()) == int(np.prod(expected))  # one solid box
        assert set(torch.unique(m).tolist()) == {0.0, 1.0}
    assert [int(np.floor(2 / 3 * s)) for s in (256, 112, 80)] == [170, 74, 53]  # the spec's sizes


def test_box_position_is_uniform_and_shared_by_the_batch():
    bcp = BidirectionalCopyPaste(seed=1)
    starts = set()
    for _ in range(50):
        m = bcp.mask((12, 12))
        starts.add(tuple(torch.nonzero(m == 0).min(0).values.tolist()))
    assert len(starts) > 5 and all(0 <= a <= 4 and 0 <= b <= 4 for a, b in starts)  # 12 - 8 = 4
    la, lb, ua, ub = (torch.full((3, 1, 12, 12), float(v)) for v in (1, 2, 3, 4))
    out = BidirectionalCopyPaste(seed=2)(la, lb, ua, ub)
    for b in range(3):  # same box for every sample
        assert torch.equal(out["image_in"][b, 0] == 3, out["image_in"][0, 0] == 3)


def test_mixes_equal_their_sources_inside_and_outside_the_box():
    g = torch.Generator().manual_seed(0)
    la, lb, ua, ub = (torch.rand(2, 1, 9, 12, generator=g) for _ in range(4))
    ya, yb, pa, pb = (torch.randint(0, 4, (2, 1, 9, 12), generator=g) for _ in range(4))
    out = BidirectionalCopyPaste(seed=0)(la, lb, ua, ub, ya, yb, pa, pb)
    box = out["mask"] == 0
    assert torch.equal(out["image_in"][..., box], ua[..., box])  # unlabeled pasted into labeled
    assert torch.equal(out["image_in"][..., ~box], la[..., ~box])
    assert torch.equal(out["image_out"][..., box], lb[..., box])  # labeled pasted into unlabeled
    assert torch.equal(out["image_out"][..., ~box], ub[..., ~box])
    assert torch.equal(out["label_in"][..., box], pa[..., box]) and torch.equal(out["label_in"][..., ~box], ya[..., ~box])
    assert torch.equal(out["label_out"][..., box], yb[..., box]) and torch.equal(out["label_out"][..., ~box], pb[..., ~box])
    assert out["label_in"].dtype == ya.dtype
    m3 = box_mask((6, 6, 6), start=(1, 2, 0))
    a, b = torch.zeros(1, 1, 6, 6, 6), torch.ones(1, 1, 6, 6, 6)
    assert mix(a, b, m3)[0, 0, 1:5, 2:6, 0:4].min() == 1 and mix(a, b, m3).sum() == 64


# ---------------------------------------------------------------------------------------------- masked loss
def _hand_dice_acdc(probs, onehot, m):
    vals = []
    for c in range(probs.shape[1]):
        p, t = probs[:, c], onehot[:, c]
        vals.append(1 - (2 * (p * t * m).sum() + 1e-10) / ((p * p * m).sum() + (t * t * m).sum() + 1e-10))
    return sum(vals) / len(vals)


def test_masked_loss_weights_one_and_alpha_on_the_right_regions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 9, generator=g)
    ys, yb = torch.randint(0, 4, (2, 1, 6, 9), generator=g), torch.randint(0, 4, (2, 1, 6, 9), generator=g)
    m = box_mask((6, 9), start=(1, 2))
    probs = torch.softmax(logits, 1)
    oh_s = torch.nn.functional.one_hot(ys[:, 0], 4).movedim(-1, 1).float()
    oh_b = torch.nn.functional.one_hot(yb[:, 0], 4).movedim(-1, 1).float()
    ce_map_s = torch.nn.functional.cross_entropy(logits, ys[:, 0], reduction="none")
    ce_map_b = torch.nn.functional.cross_entropy(logits, yb[:, 0], reduction="none")
    for ws, wb in ((1.0, 0.5), (0.5, 1.0), (1.0, 1.0)):
        ce = ws * (ce_map_s * m).sum() / (2 * m.sum()) + wb * (ce_map_b * (1 - m)).sum() / (2 * (1 - m).sum())
        dice = ws * _hand_dice_acdc(probs, oh_s, m) + wb * _hand_dice_acdc(probs, oh_b, 1 - m)
        got = MaskedDiceCELoss("acdc")(logits, ys, yb, m, ws, wb)
        torch.testing.assert_close(got, (ce + dice) / 2, rtol=1e-5, atol=1e-6)
    # pixels of one region do not influence the other region's term
    ys2 = ys.clone()
    ys2[..., m == 0] = (ys2[..., m == 0] + 1) % 4
    torch.testing.assert_close(masked_ce(logits, ys, m), masked_ce(logits, ys2, m))
    torch.testing.assert_close(masked_dice(probs, ys, m), masked_dice(probs, ys2, m))


def test_background_mask_bug_flag_reproduces_the_unmasked_background_term():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 8, 8, generator=g)
    y = torch.randint(0, 4, (1, 1, 8, 8), generator=g)
    m = box_mask((8, 8), start=(2, 2))
    probs = torch.softmax(logits, 1)
    fixed, buggy = masked_dice(probs, y, m), masked_dice(probs, y, m, bug_compat=True)
    assert not torch.allclose(fixed, buggy)
    oh = torch.nn.functional.one_hot(y[:, 0], 4).movedim(-1, 1).float()
    ones = torch.ones_like(m)
    bg_unmasked = 1 - (2 * (probs[:, 0] * oh[:, 0]).sum() + 1e-10) / ((probs[:, 0] ** 2).sum() + (oh[:, 0] ** 2).sum() + 1e-10)
    fg = [_hand_dice_acdc(probs[:, c:c + 1], oh[:, c:c + 1], m) for c in (1, 2, 3)]
    torch.testing.assert_close(buggy, (bg_unmasked + sum(fg)) / 4)
    assert torch.allclose(masked_dice(probs, y, ones), masked_dice(probs, y, ones, bug_compat=True))


def test_la_dice_form_per_sample_and_class():
    probs = torch.tensor([[[[0.2, 0.9]], [[0.8, 0.1]]]])  # [1, 2, 1, 2]
    y = torch.tensor([[[[1, 0]]]])
    m = torch.ones(1, 2)
    d0 = (2 * 0.9 + 1e-5) / (0.2 + 0.9 + 1 + 1e-5)
    d1 = (2 * 0.8 + 1e-5) / (0.8 + 0.1 + 1 + 1e-5)
    torch.testing.assert_close(masked_dice(probs, y, m, form="la"), torch.tensor(1 - (d0 + d1) / 2))


# ---------------------------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("buffers", [True, False])
def test_ema_is_point_99_teacher_plus_point_01_student(buffers):
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        student[1].running_mean.fill_(2.0)
        teacher[1].running_mean.fill_(4.0)
    assert all(not p.requires_grad for p in teacher.parameters())
    s_params = [p.detach().clone() for p in student.parameters()]
    EMA(teacher, student, decay=0.99, buffers=buffers)()
    for t, s in zip(teacher.parameters(), s_params):
        torch.testing.assert_close(t, 0.99 * torch.ones_like(s) + 0.01 * s)
    expected = 0.99 * 4.0 + 0.01 * 2.0 if buffers else 4.0
    torch.testing.assert_close(teacher[1].running_mean, torch.full((2,), expected))


def test_ema_attaches_to_an_engine_and_updates_every_iteration():
    from ignite.engine import Engine

    student, teacher = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        student.weight.fill_(1.0), teacher.weight.fill_(0.0)
    ema = EMA(teacher, student, decay=0.5, buffers=False)
    engine = Engine(lambda e, b: None)
    ema.attach(engine)
    engine.run([0, 1, 2], max_epochs=1)
    torch.testing.assert_close(teacher.weight, torch.full((1, 2), 1 - 0.5**3))
    assert ema.step == 3


# ---------------------------------------------------------------------------------------------- pseudo labels
def test_lcc_keeps_one_component_per_class():
    from scipy import ndimage

    lab = torch.zeros(2, 1, 12, 12, dtype=torch.long)
    lab[0, 0, 1:3, 1:3] = 1
    lab[0, 0, 6:10, 6:10] = 1  # larger class-1 blob
    lab[0, 0, 0, 10:12] = 2
    lab[0, 0, 10:12, 0:3] = 2  # larger class-2 blob
    lab[1, 0, 4:6, 4:6] = 3  # one blob: unchanged
    out = largest_component_per_class(lab, 4)
    for b in range(2):
        for c in (1, 2, 3):
            n = ndimage.label(out[b, 0].numpy() == c)[1]
            assert n <= 1
    assert int((out[0, 0] == 1).sum()) == 16 and int((out[0, 0] == 2).sum()) == 6
    assert torch.equal(out[1], lab[1])
    # diagonal neighbours are connected with full connectivity
    diag = torch.zeros(1, 1, 5, 5, dtype=torch.long)
    diag[0, 0, 0, 0] = diag[0, 0, 1, 1] = 1
    diag[0, 0, 4, 4] = 1
    assert int((largest_component_per_class(diag, 2) == 1).sum()) == 2


def test_pseudo_labels_argmax_threshold_and_lcc():
    logits = torch.full((1, 2, 8, 8, 4), -5.0)
    logits[0, 1, 0:2, 0:2, 0:2] = 5.0
    logits[0, 1, 4:8, 4:8, 0:4] = 5.0
    logits[0, 0] = -logits[0, 1]
    lab = pseudo_labels(logits, threshold=0.5)
    assert lab.shape == (1, 1, 8, 8, 4) and lab.dtype == torch.long and not hasattr(lab, "meta")
    assert int(lab.sum()) == 64  # only the large component
    assert int(pseudo_labels(logits, threshold=0.5, lcc=False).sum()) == 72
    assert torch.equal(pseudo_labels(logits, lcc=False), pseudo_labels(logits, threshold=0.5, lcc=False))


# ---------------------------------------------------------------------------------------------- backbones
def test_unet2d_parameter_count_keys_and_shape():
    net = UNet2D(1, 4)
    assert sum(p.numel() for p in net.parameters()) == 1_813_764
    keys = set(net.state_dict())
    for k in ("encoder.in_conv.conv_conv.0.weight", "encoder.in_conv.conv_conv.5.running_var",
              "encoder.down4.maxpool_conv.1.conv_conv.4.weight", "decoder.up1.conv1x1.weight",
              "decoder.up4.conv.conv_conv.1.bias", "decoder.out_conv.weight"):
        assert k in keys
    assert net.decoder.out_conv.kernel_size == (3, 3)
    assert net.eval()(torch.rand(1, 1, 64, 48)).shape == (1, 4, 64, 48)


def test_unet2d_loads_an_official_style_checkpoint(tmp_path):
    net = UNet2D(1, 4)
    state = {f"module.{k}": v for k, v in UNet2D(1, 4).state_dict().items()}
    state["projection_head.0.weight"] = torch.zeros(3)
    state["contrastive_class_selector_0.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "unet.pth")
    load_official_unet(net, tmp_path / "unet.pth")
    assert torch.equal(net.decoder.out_conv.weight, state["module.decoder.out_conv.weight"])


def test_vnet_parameter_count_keys_and_shape():
    net = VNet(1, 2, 16, "batchnorm", True)
    assert sum(p.numel() for p in net.parameters()) == 9_448_866
    inorm = VNet(1, 2, 16, "instancenorm", False)
    assert abs(sum(p.numel() for p in inorm.parameters()) - 9.44e6) / 9.44e6 < 0.01
    keys = set(net.state_dict())
    for k in ("encoder.block_one.conv.0.weight", "encoder.block_five.conv.6.weight", "encoder.block_four_dw.conv.0.weight",
              "decoder.block_five_up.conv.0.weight", "decoder.block_nine.conv.0.weight", "decoder.out_conv.weight"):
        assert k in keys
    small = VNet(1, 2, 4).eval()
    assert small(torch.rand(1, 1, 32, 32, 16)).shape == (1, 2, 32, 32, 16)


# ---------------------------------------------------------------------------------------------- trainer
def _stream(n, size, labeled=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        b = {"image": torch.rand(4, 1, size, size, generator=g)}
        if labeled:
            b["label"] = torch.randint(0, 4, (4, 1, size, size), generator=g)
        batches.append(b)
    return batches


@pytest.mark.parametrize("stage", ["pretrain", "selftrain"])
def test_bcp_trainer_runs_and_updates_teacher_by_ema(stage):
    torch.manual_seed(0)
    net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    teacher = make_teacher(net) if stage == "selftrain" else None
    t0 = [p.clone() for p in teacher.parameters()] if teacher is not None else None
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    trainer = BCPTrainer(
        device="cpu", max_epochs=1, train_data_loader=_stream(3, 32), network=net, optimizer=opt,
        loss_function=MaskedDiceCELoss(), unlabeled_data_loader=_stream(2, 32, labeled=False), teacher=teacher,
        stage=stage, seed=0, decollate=False,
    )
    trainer.run()
    assert trainer.state.iteration == 3 and torch.isfinite(trainer.state.output["loss"])
    if stage == "selftrain":
        assert trainer.ema.step == 3
        moved = [not torch.equal(a, b) for a, b in zip(t0, teacher.parameters())]
        assert any(moved)
    with pytest.raises(ValueError):
        BCPTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=opt,
                   loss_function=MaskedDiceCELoss(), stage="selftrain")


def test_load_pretrained_initialises_student_and_teacher(tmp_path):
    src, a, b = UNet2D(1, 4), UNet2D(1, 4), UNet2D(1, 4)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    load_pretrained(str(tmp_path / "model.pt"), a, b)
    for net in (a, b):
        assert torch.equal(net.decoder.out_conv.weight, src.decoder.out_conv.weight)
    assert load_pretrained("", a) is None
    with pytest.raises(FileNotFoundError, match="pre-training"):
        load_pretrained(str(tmp_path / "missing.pt"), a)


def test_without_copy_paste_the_box_terms_vanish_and_the_trainer_runs():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    ys, yb = torch.randint(0, 4, (2, 1, 8, 8), generator=g), torch.randint(0, 4, (2, 1, 8, 8), generator=g)
    ones = torch.ones(8, 8)
    loss = MaskedDiceCELoss()
    torch.testing.assert_close(loss(logits, ys, yb, ones, 0.5, 1.0), 0.5 * loss(logits, ys, ys, ones, 1.0, 0.0))
    torch.manual_seed(0)
    net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    trainer = BCPTrainer(
        device="cpu", max_epochs=1, train_data_loader=_stream(2, 32), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=loss,
        unlabeled_data_loader=_stream(1, 32, labeled=False), teacher=make_teacher(net), copy_paste=False,
        decollate=False,
    )
    trainer.run()
    assert trainer.state.iteration == 2 and torch.isfinite(trainer.state.output["loss"])


def test_an_empty_unlabeled_stream_raises_instead_of_hanging():
    net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    trainer = BCPTrainer(
        device="cpu", max_epochs=1, train_data_loader=_stream(1, 32), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=MaskedDiceCELoss(),
        unlabeled_data_loader=[], teacher=make_teacher(net), decollate=False,
    )
    with pytest.raises(ValueError, match="unlabeled data loader yields no batch"):
        trainer.run()
