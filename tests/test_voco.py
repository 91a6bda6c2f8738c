"""VoCo components: crop geometry and position labels, VoCoHead shapes and sizes, both VoCo loss forms on hand-made
logits, checkpoint compatibility with MONAI's SwinUNETR(use_v2=True), the BTCV reader and synthetic data."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR

from custom_components.data.btcv import BTCV_CLASSES, convert_btcv, generate_btcv_synthetic
from custom_components.engines.voco import VoCoTrainer, split_crops
from custom_components.losses.voco import VoCoLoss
from custom_components.networks.voco import (
    BACKBONE_PREFIXES,
    VoCoHead,
    VoCoNet,
    load_voco_checkpoint,
    save_voco_backbone,
)
from custom_components.transforms.voco import VoCoCropsd, base_crop_boxes, position_labels

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------------------------------
def test_position_labels_hand_computed():
    # grid 2, roi 4: cells [0,4)x[0,4) k=0, [0,4)x[4,8) k=1, [4,8)x[0,4) k=2, [4,8)x[4,8) k=3
    labels = position_labels([(2, 2), (4, 4), (3, 5), (6, 2)], grid=2, roi=4)
    np.testing.assert_allclose(labels[0], [1, 0, 0, 0])
    np.testing.assert_allclose(labels[1], [0.25, 0.25, 0.25, 0.25])
    # crop x [1,5), y [3,7): overlaps 3x1, 3x3, 1x1, 1x3 voxels of 16
    np.testing.assert_allclose(labels[2], [3 / 16, 9 / 16, 1 / 16, 3 / 16])
    np.testing.assert_allclose(labels[3], [0, 0, 1, 0])


def test_position_labels_vocogeometry_sum_to_one_with_at_most_four_nonzeros():
    rng = np.random.default_rng(0)
    centres = rng.integers(48, 384 - 48, size=(500, 2))  # U{48..335}, VoCo geometry (grid 4, roi 96)
    labels = position_labels(centres, grid=4, roi=96)
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-6)
    assert (np.count_nonzero(labels, axis=1) <= 4).all() and (np.count_nonzero(labels, axis=1) >= 1).all()
    # index k = 4 i + j, i along the first axis: a crop centred in cell (i=2, j=1) has its largest overlap at k = 9
    assert position_labels([(2 * 96 + 48, 96 + 48)], 4, 96)[0].argmax() == 9


def test_crops_tile_the_volume_and_random_crops_match_their_labels():
    grid, roi, depth = 3, 4, 5
    vol = torch.arange(grid * roi * grid * roi * depth, dtype=torch.float32).reshape(1, grid * roi, grid * roi, depth)
    t = VoCoCropsd("image", grid=grid, roi=roi, spatial_size=None, num_random=3, flip_prob=0, rotate_prob=0,
                   shift_prob=0).set_random_state(7)
    out = t({"image": vol})
    crops, labels = out["image"], out["position"]
    assert crops.shape == (3 + grid * grid, 1, roi, roi, depth) and labels.shape == (3, grid * grid)
    # base crops, in index order k = grid * i + j, tile the volume exactly
    rebuilt = torch.zeros_like(vol)
    for k, (x0, x1, y0, y1) in enumerate(base_crop_boxes(grid, roi)):
        assert (k // grid, k % grid) == (x0 // roi, y0 // roi)
        rebuilt[:, x0:x1, y0:y1] += crops[3 + k]
    torch.testing.assert_close(rebuilt, vol)
    # each random crop is the roi square at a centre whose overlap fractions are its label
    for n in range(3):
        first = crops[n].flatten()[0].item()
        x0, rest = divmod(int(first), grid * roi * depth)
        y0 = rest // depth
        torch.testing.assert_close(crops[n], vol[:, x0:x0 + roi, y0:y0 + roi])
        np.testing.assert_allclose(labels[n].numpy(), position_labels([(x0 + roi // 2, y0 + roi // 2)], grid, roi)[0])
    np.testing.assert_allclose(labels.sum(1).numpy(), 1.0, atol=1e-6)


def test_crops_are_resized_and_augmented_independently():
    vol = torch.rand(1, 16, 16, 8)
    t = VoCoCropsd("image", grid=2, roi=8, spatial_size=(4, 4, 4), num_random=2, flip_prob=1.0, rotate_prob=0,
                   shift_prob=0).set_random_state(0)
    out = t({"image": vol})
    assert out["image"].shape == (6, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="expects a channel-first volume of size"):
        t({"image": torch.rand(1, 15, 16, 8)})


# ---------------------------------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------------------------------
def _count(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_official_sizes_at_feature_size_48():
    head = VoCoHead(feature_size=48)
    student = head.student
    assert round(_count(student.swinViT), 3) == 18.637
    assert round(_count(student) - _count(student.proj_head), 3) == 53.164
    assert round(_count(student.proj_head), 3) == 10.754
    assert round(_count(head), 3) == 127.836
    assert student.proj_head.layer1[0].in_features == 24 * 48
    assert round(_count(SwinUNETR(in_channels=1, out_channels=14, feature_size=48, use_v2=True)), 3) == 72.763
    assert not any(p.requires_grad for p in head.teacher.parameters())
    torch.testing.assert_close(head.teacher.state_dict(), student.state_dict())  # teacher_init="copy"


def test_voco_head_shapes():
    head = VoCoHead(feature_size=12, hidden_dim=32, out_dim=16, teacher_init="independent").train()
    x = torch.rand(3, 1, 32, 32, 64)
    assert head.student.features(x).shape == (3, 24 * 12)
    assert head(x).shape == (3, 16)
    assert head.teacher(x).shape == (3, 16)
    assert VoCoHead(feature_size=12, hidden_dim=32, out_dim=16, with_teacher=False).teacher is None
    assert set(k.split(".")[0] for k in head.state_dict()) == {"student", "teacher"}


# ---------------------------------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------------------------------
def test_repo_loss_hand_computed():
    x_s = torch.tensor([[[1.0, 1.0]]])              # (B=1, N=1, D=2)
    b_s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (B=1, K=2, D=2)
    x_t = torch.tensor([[[1.0, 0.0]]])
    b_t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    y = torch.tensor([[[1.0, 0.0]]])
    r = 1 / math.sqrt(2)
    # l1 = relu(cos(x_s, b_t)) = [r, r]; l2 = relu(cos(x_t, b_s)) = [1, r]; l = [(1 + r)/2, r]
    l0 = (1 + r) / 2
    pos = -math.log(1 - abs(1 - l0) + 1e-6) / (1 + 1e-6)
    neg = r**2 / (1 + 1e-6)
    reg = r**2  # one pair (0, 1): relu(cos(b0, b1))^2
    terms = VoCoLoss("repo").terms(x_s, b_s, y, x_t, b_t)
    torch.testing.assert_close(terms["logits"], torch.tensor([[[l0, r]]]))
    assert terms["pos"].item() == pytest.approx(pos, rel=1e-5)
    assert terms["neg"].item() == pytest.approx(neg, rel=1e-5)
    assert terms["reg"].item() == pytest.approx(reg, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(pos + neg + reg, rel=1e-5)


def test_repo_loss_averages_volumes_and_stops_gradient_of_the_second_base():
    b_s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], requires_grad=True)
    loss = VoCoLoss("repo")
    reg = loss.terms(torch.ones(1, 1, 2), b_s, torch.tensor([[[0.5, 0.5]]]), torch.ones(1, 1, 2),
                     torch.ones(1, 2, 2))["reg"]
    reg.backward()
    assert b_s.grad[0, 0].abs().sum() > 0 and b_s.grad[0, 1].abs().sum() == 0
    # two identical volumes give the loss of one
    args = [torch.rand(1, 2, 4), torch.rand(1, 3, 4), torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]]),
            torch.rand(1, 2, 4), torch.rand(1, 3, 4)]
    one = loss(*args)
    two = loss(*[torch.cat([a, a]) for a in args])
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_cvpr_loss_hand_computed():
    x = torch.tensor([[[1.0, 1.0]]])
    b = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    y = torch.tensor([[[0.5, 0.5]]])
    r = 1 / math.sqrt(2)
    pred = -(math.log(1 - abs(0.5 - r)) + math.log(1 - abs(0.5 - 1.0))) / 2
    reg = r  # mean |cos| over the off-diagonal pairs (0,1) and (1,0)
    terms = VoCoLoss("cvpr", reg_weight=2.0).terms(x, b, y)
    assert terms["pos"].item() == pytest.approx(pred, rel=1e-5)
    assert terms["reg"].item() == pytest.approx(reg, rel=1e-5)
    assert terms["neg"].item() == 0
    assert terms["loss"].item() == pytest.approx(pred + 2.0 * reg, rel=1e-5)
    with pytest.raises(ValueError, match="needs teacher features"):
        VoCoLoss("repo").terms(x, b, y)
    with pytest.raises(ValueError, match="variant"):
        VoCoLoss("other")


def test_iteration_updates_teacher_by_ema_before_its_forward():
    torch.manual_seed(0)
    head = VoCoHead(feature_size=12, hidden_dim=16, out_dim=8, teacher_init="independent")
    before_t = {k: v.clone() for k, v in head.teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in head.student.state_dict().items()}
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-3)
    labels = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    batch = {"image": torch.rand(1, 5, 1, 32, 32, 64), "position": labels}
    step = VoCoTrainer("cpu", 1, [batch], head, opt, VoCoLoss("repo"), ema_momentum=0.9)
    step.run()
    out = step.state.output
    assert set(out) == {"loss", "loss_pos", "loss_neg", "loss_reg", "accuracy"}
    key = "swinViT.patch_embed.proj.weight"
    torch.testing.assert_close(head.teacher.state_dict()[key], 0.9 * before_t[key] + 0.1 * before_s[key])
    assert not torch.equal(head.student.state_dict()[key], before_s[key])  # the student took an optimizer step
    # the CVPR form: one network, no teacher, no EMA
    single = VoCoHead(feature_size=12, hidden_dim=16, out_dim=8, with_teacher=False)
    cvpr = VoCoTrainer("cpu", 1, [batch], single, torch.optim.AdamW(single.parameters(), lr=1e-3), VoCoLoss("cvpr"))
    assert cvpr.ema is None and cvpr.ema_state.state_dict() == {}
    cvpr.run()
    assert cvpr.state.output["loss_neg"] == 0 and math.isfinite(cvpr.state.output["loss"])
    with pytest.raises(ValueError, match="needs a VoCoHead with a teacher"):
        VoCoTrainer("cpu", 1, [batch], single, cvpr.optimizer, VoCoLoss("repo"))
    xs, bs = split_crops(torch.arange(10.0).reshape(10, 1), 2, 1)
    assert xs.flatten().tolist() == [0, 5] and bs.shape == (2, 4, 1)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------------
FS = 12


def _swinunetr(in_channels: int = 1) -> SwinUNETR:
    return SwinUNETR(in_channels=in_channels, out_channels=14, feature_size=FS, use_v2=True)


def _backbone_keys(net) -> set[str]:
    return {k for k in net.state_dict() if k.startswith(BACKBONE_PREFIXES)}


def test_pretrain_backbone_loads_into_swinunetr_v2_with_every_backbone_key(tmp_path):
    head = VoCoHead(feature_size=FS, hidden_dim=16, out_dim=8, teacher_init="independent")
    path = save_voco_backbone(head, tmp_path / "backbone.pt")
    target = _swinunetr()
    state = torch.load(path, weights_only=True)
    result = target.load_state_dict(state, strict=False)
    assert set(state) == _backbone_keys(target)  # matched: every backbone key
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == set(target.state_dict()) - _backbone_keys(target)
    assert {k.split(".")[0] for k in result.missing_keys} == {"decoder1", "decoder2", "decoder3", "decoder4",
                                                                "decoder5", "out"}
    for k in state:
        torch.testing.assert_close(target.state_dict()[k], head.student.state_dict()[k])


def test_pretrain_model_checkpoint_loads_student_or_teacher_through_the_loader(tmp_path):
    head = VoCoHead(feature_size=FS, hidden_dim=16, out_dim=8, teacher_init="independent")
    torch.save(head.state_dict(), tmp_path / "model.pt")
    for source in ("student", "teacher"):
        target = _swinunetr()
        report = load_voco_checkpoint(target, str(tmp_path / "model.pt"), source=source)
        assert set(report["matched"]) == _backbone_keys(target)
        assert set(report["missing"]) == set(target.state_dict()) - _backbone_keys(target)
        assert report["unexpected"] == [] and report["mismatched"] == []
        key = "swinViT.layers1c.0.layer.conv1.conv.weight"  # a use_v2 residual block
        torch.testing.assert_close(target.state_dict()[key], getattr(head, source).state_dict()[key])


def test_official_style_checkpoint_loads_with_reported_keys(tmp_path):
    net = VoCoNet(feature_size=FS, hidden_dim=16, out_dim=8)
    official = {f"module.{k.replace('swinViT', 'swin_vit')}": v for k, v in net.state_dict().items()}
    official["module.extra_head.weight"] = torch.zeros(3)
    torch.save({"state_dict": official}, tmp_path / "VoCo_10k.pt")
    target = _swinunetr()
    report = load_voco_checkpoint(target, str(tmp_path / "VoCo_10k.pt"))
    assert set(report["matched"]) == _backbone_keys(target)
    assert set(report["missing"]) == set(target.state_dict()) - _backbone_keys(target)
    assert report["unexpected"] == ["extra_head.weight"]  # proj_head is dropped, not reported
    assert report["mismatched"] == []
    torch.testing.assert_close(target.swinViT.patch_embed.proj.weight, net.swinViT.patch_embed.proj.weight)
    # a 4-channel target (BraTS-like): patch embedding and encoder1 differ in shape, reported and skipped
    target4 = _swinunetr(in_channels=4)
    report4 = load_voco_checkpoint(target4, {"state_dict": official})
    assert set(report4["mismatched"]) == {"swinViT.patch_embed.proj.weight", "encoder1.layer.conv1.conv.weight",
                                          "encoder1.layer.conv3.conv.weight"}
    assert set(report4["matched"]) == _backbone_keys(target4) - set(report4["mismatched"])


def test_loader_fails_loudly_when_no_backbone_key_matches(tmp_path):
    net = VoCoNet(feature_size=FS, hidden_dim=16, out_dim=8)
    renamed = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError, match="backbone keys of the network were not filled"):
        load_voco_checkpoint(_swinunetr(), renamed)
    with pytest.raises(FileNotFoundError, match="VoCo checkpoint not found"):
        load_voco_checkpoint(_swinunetr(), str(tmp_path / "missing.pt"))
    assert load_voco_checkpoint(_swinunetr(), "") is None


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def test_synthetic_btcv_has_labeled_splits_and_an_unlabeled_pool(tmp_path):
    path = generate_btcv_synthetic(tmp_path / "btcv", num_training=2, num_validation=1, num_test=1, num_unlabeled=2,
                                   shape=(48, 48, 24), spacing=(8.0, 8.0, 10.0))
    data = json.loads(open(path).read())
    assert [len(data[k]) for k in ("training", "validation", "test", "unlabeled")] == [2, 1, 1, 2]
    assert all("label" not in it for it in data["unlabeled"])
    assert data["labels"] == {str(i): n for i, n in enumerate(BTCV_CLASSES)}
    label = nib.load(tmp_path / "btcv" / data["training"][0]["label"])
    image = nib.load(tmp_path / "btcv" / data["training"][0]["image"])
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S") and image.shape == label.shape == (48, 48, 24)
    values = np.unique(np.asarray(label.dataobj))
    assert values.max() <= 13 and {1, 6, 8} <= set(values.tolist())  # spleen, liver, aorta
    hu = np.asarray(image.dataobj)
    assert hu.min() < -900 and hu.max() > 100


def test_convert_btcv_reads_dataset_0_json(tmp_path):
    root = tmp_path / "BTCV"
    entries = []
    for i in (1, 2, 35):
        for sub, name in (("imagesTr", f"img{i:04d}"), ("labelsTr", f"label{i:04d}")):
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(root / sub / f"{name}.nii.gz"))
        entries.append({"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"})
    (root / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(root / "imagesTs" / "img0061.nii.gz"))
    published = {"training": entries[:2], "validation": entries[2:], "test": ["imagesTs/img0061.nii.gz"]}
    (root / "dataset_0.json").write_text(json.dumps(published))
    out = json.loads(open(convert_btcv(root)).read())
    assert out["training"] == entries[:2] and out["validation"] == out["test"] == entries[2:]
    assert out["unlabeled"] == [{"image": "imagesTs/img0061.nii.gz"}]
    published["training"].append({"image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps(published))
    with pytest.raises(FileNotFoundError, match="img0003.nii.gz"):
        convert_btcv(root)



@pytest.mark.parametrize("augment", [True, False])
def test_augment_key_keeps_or_drops_the_random_augmentation_but_never_the_crops(tmp_path, augment):
    from monai.bundle import ConfigParser
    from monai.transforms import RandCropByPosNegLabeld

    from conftest import REPO
    from custom_components.transforms import AUGMENTATIONS

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "voco_btcv_segmentation" / "configs" / "train.json")])
    parser.update({"bundle_root": str(tmp_path), "augment": augment})
    full = parser.get_parsed_content("train#preprocessing")
    kinds = [type(t) for t in parser.get_parsed_content("train#dataset#transform").transforms]
    assert sum(isinstance(t, AUGMENTATIONS) for t in full.transforms) == 6  # 3 flips, rot90, intensity scale, shift
    assert kinds == [type(t) for t in full.transforms if augment or not isinstance(t, AUGMENTATIONS)]
    assert RandCropByPosNegLabeld in kinds
