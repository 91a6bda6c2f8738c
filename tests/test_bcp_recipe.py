"""BCP fidelity to the official code (issue 13, part 1) and the two-stage recipe helpers (part 2), on small
deterministic examples: the LA pre-training loss, the official rot90 + one flip augmentation, the LA sliding window
(stride 18/18/4, averaged probabilities) and missed-structure convention, stage 1's optimizer momentum in stage 2,
the stage plan, stage 1's final files, and the bundle configs that select each of these."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.utils import CommonKeys as Keys

from custom_components.engines.bcp import (
    BCPTrainer,
    SoftmaxSlidingWindowInferer,
    load_pretrained,
    run_pretrain,
    stages_to_run,
)
from custom_components.engines.report import SegmentationReport, compute_case_metrics
from custom_components.losses import MaskedDiceCELoss
from custom_components.networks.bcp_unet import UNet2D
from custom_components.transforms.bcp import RandRotFlipd, SelectSliced

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "bundles" / "bcp_acdc_segmentation" / "configs"


def _parser(tmp_path, *names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CFG / n) for n in names])
    parser.update({"bundle_root": str(tmp_path), **overrides})
    return parser


# ---------------------------------------------------------------------------------------------- LA pre-training loss
def _hand_la_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Official LA ``pre_train``: ``(F.cross_entropy + mask_DiceLoss) / 2`` on the whole mixed image, by hand."""
    ce = F.cross_entropy(logits, y[:, 0])
    p = torch.softmax(logits, 1)
    t = F.one_hot(y[:, 0], logits.shape[1]).movedim(-1, 1).float()
    dims = tuple(range(2, logits.dim()))
    dice = (2 * (p * t).sum(dims) + 1e-5) / ((p + t).sum(dims) + 1e-5)  # per sample and class
    return (ce + (1 - dice.mean())) / 2


def _pretrain_trainer(pretrain_loss: str, net: torch.nn.Module) -> BCPTrainer:
    return BCPTrainer(
        device="cpu", max_epochs=1, train_data_loader=[], network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=MaskedDiceCELoss("la"),
        stage="pretrain", pretrain_loss=pretrain_loss, seed=0, decollate=False,
    )


def test_la_pretrain_loss_is_whole_image_ce_plus_dice_on_the_mixed_label():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(4, 1, 9, 9, 6, generator=g)
    y = (torch.rand(4, 1, 9, 9, 6, generator=g) > 0.6).long()
    trainer = _pretrain_trainer("mixed_label", net)
    out = trainer.compute_pred(trainer, x, y, (), {})
    loss = trainer.compute_loss(trainer, out)
    mixed = out[Keys.LABEL]
    assert mixed.shape == (2, 1, 9, 9, 6) and not torch.equal(mixed, y[:2]) and not torch.equal(mixed, y[2:])
    torch.testing.assert_close(loss, _hand_la_loss(out[Keys.PRED], mixed.long()), rtol=1e-5, atol=1e-6)
    # ACDC's masked two-region loss is another value on the same mix
    masked = _pretrain_trainer("masked", net)
    out_m = masked.compute_pred(masked, x, y, (), {})
    assert not torch.allclose(masked.compute_loss(masked, out_m), _hand_la_loss(out_m[Keys.PRED], out_m[Keys.LABEL]))
    with pytest.raises(ValueError, match="pretrain_loss"):
        _pretrain_trainer("plain", net)


def test_bundle_configs_pick_the_official_pretraining_loss_per_dataset(tmp_path):
    assert _parser(tmp_path, "train.json").get_parsed_content("pretrain_loss") == "masked"
    la = _parser(tmp_path, "train.json", "train_la.json")
    assert la.get_parsed_content("pretrain_loss") == "mixed_label"
    assert la.get("pretrain#trainer#pretrain_loss") == "@pretrain_loss"


# ---------------------------------------------------------------------------------------------- augmentation
def _dihedral(x: np.ndarray) -> tuple[set, set]:
    """Byte strings of the 4 pure rotations and of the 4 reflections of a 2D array (axes 0, 1 of ``x``)."""
    rotations = {np.ascontiguousarray(np.rot90(x, k)).tobytes() for k in range(4)}
    reflections = {np.ascontiguousarray(np.flip(np.rot90(x, k), 0)).tobytes() for k in range(4)}
    return rotations, reflections


def test_rand_rot_flip_is_rot90_k_0_to_3_then_exactly_one_flip():
    x = np.arange(5 * 5 * 3, dtype=np.float32).reshape(1, 5, 5, 3)  # asymmetric: all 8 images differ
    rotations, reflections = _dihedral(x[0])
    assert len(rotations | reflections) == 8
    t = RandRotFlipd(["image", "label"], prob=1.0, spatial_axes=(0, 1))
    t.set_random_state(0)
    seen_k, seen_axes, outcomes = set(), set(), set()
    for _ in range(200):
        out = t({"image": torch.as_tensor(x), "label": torch.as_tensor(x)})
        img = np.asarray(out["image"])[0]
        assert np.array_equal(img, np.asarray(out["label"])[0])  # same draw for every key
        key = np.ascontiguousarray(img).tobytes()
        assert key in reflections and key not in rotations  # one flip, never zero or two
        outcomes.add(key)
        seen_k.add(t._k)
        seen_axes.add(t._flip_axis)
    assert seen_k == {0, 1, 2, 3} and seen_axes == {0, 1} and outcomes == reflections


def test_la_config_uses_the_official_rot_flip_and_acdc_picks_one_augmentation(tmp_path):
    la = _parser(tmp_path, "train.json", "train_la.json")
    for key in ("train#preprocessing", "train#unlabeled_preprocessing"):
        targets = [t["_target_"] for t in la.get(key)["transforms"]]
        assert "custom_components.transforms.bcp.RandRotFlipd" in targets
        assert not {"RandFlipd", "RandRotate90d"} & set(targets)
    acdc = _parser(tmp_path, "train.json")
    one_of = acdc.get("train#preprocessing")["transforms"][-1]
    assert one_of["_target_"] == "OneOf" and one_of["weights"] == [0.5, 0.25, 0.25]  # official: p .5, else p .5


def test_select_sliced_copies_one_slice():
    vol = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).float()
    out = SelectSliced(["image"], axis=-1)({"image": vol, "slice": 3})
    assert out["image"].shape == (2, 3, 4) and torch.equal(out["image"], vol[..., 3])
    assert out["image"].untyped_storage().data_ptr() != vol.untyped_storage().data_ptr()  # not a view of the volume
    with pytest.raises(IndexError):
        SelectSliced(["image"])({"image": vol, "slice": 5})


# ---------------------------------------------------------------------------------------------- LA evaluation
def test_softmax_sliding_window_steps_by_the_stride_and_averages_probabilities():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 10, 9, 7)
    roi, stride = (6, 6, 4), (2, 3, 1)
    inferer = SoftmaxSlidingWindowInferer(roi, stride=stride, sw_batch_size=3, mode="constant")
    with torch.no_grad():
        got = inferer(x, net)
        total, count = torch.zeros(1, 2, 10, 9, 7), torch.zeros(1, 1, 10, 9, 7)
        starts = [sorted({min(i * s, n - r) for i in range(math.ceil((n - r) / s) + 1)})
                  for n, r, s in zip(x.shape[2:], roi, stride)]
        for a in starts[0]:
            for b in starts[1]:
                for c in starts[2]:
                    win = (..., slice(a, a + 6), slice(b, b + 6), slice(c, c + 4))
                    total[win] += torch.softmax(net(x[win]), 1)
                    count[win] += 1
    assert starts == [[0, 2, 4], [0, 3], [0, 1, 2, 3]]  # the official test_single_case positions
    torch.testing.assert_close(got, total / count, rtol=1e-5, atol=1e-6)
    official = SoftmaxSlidingWindowInferer((112, 112, 80), stride=(18, 18, 4))
    from monai.inferers.utils import _get_scan_interval

    assert _get_scan_interval((150, 140, 100), (112, 112, 80), 3, official.overlap) == (18, 18, 4)


def test_missed_structure_distances_nan_by_default_zero_with_the_official_convention(tmp_path):
    label = np.zeros((8, 8, 4), np.int64)
    label[2:5, 2:5, 1:3] = 1
    label[5:7, 5:7, 2] = 2
    pred = np.zeros_like(label)
    pred[2:5, 2:5, 1:3] = 1  # class 2 missed
    pred[0, 0, 0] = 3  # class 3 hallucinated
    default = compute_case_metrics(pred, label, 4, spacing=(1.0, 1.0, 2.0))
    zero = compute_case_metrics(pred, label, 4, spacing=(1.0, 1.0, 2.0), empty_distance="zero")
    for m in ("hd95", "asd", "hd95_mm", "asd_mm"):
        assert math.isnan(default["2"][m]) and zero["2"][m] == 0.0
        assert math.isnan(zero["3"][m])  # a false positive has no ground truth to measure against
        assert zero["1"][m] == default["1"][m]
    assert zero["2"]["dice"] == default["2"]["dice"] == 0.0
    with pytest.raises(ValueError, match="empty_distance"):
        compute_case_metrics(pred, label, 4, empty_distance="0")
    report = SegmentationReport(tmp_path, ["bg", "a", "b", "c"], empty_distance="zero")
    report.add_case("c1", pred, label)
    assert report.summary()["classes"]["b"]["hd95"]["mean"] == 0.0
    report.write()
    assert json.loads((tmp_path / "metrics.json").read_text())["empty_distance"] == "zero"


def test_la_evaluate_config_uses_official_windows_and_convention(tmp_path):
    la = _parser(tmp_path, "train.json", "train_la.json", "evaluate.json", "evaluate_la.json")
    assert la.get_parsed_content("empty_distance") == "zero" and la.get_parsed_content("sw_stride") == [18, 18, 4]
    inferer = la.get_parsed_content("validate#inferer")
    assert isinstance(inferer, SoftmaxSlidingWindowInferer)
    from monai.inferers.utils import _get_scan_interval

    assert _get_scan_interval((130, 130, 90), (112, 112, 80), 3, inferer.overlap) == (18, 18, 4)
    post = [t["_target_"] for t in la.get("validate#postprocessing")["transforms"]]
    assert "Activationsd" not in post  # the inferer already averaged probabilities
    handler = next(h for h in la.get("validate#handlers") if "SegmentationReportHandler" in h["_target_"])
    assert handler["empty_distance"] == "@empty_distance"
    assert _parser(tmp_path, "train.json", "evaluate.json").get_parsed_content("empty_distance") == "nan"


# ---------------------------------------------------------------------------------------------- stage 1 -> stage 2
def _sgd_with_momentum(net: torch.nn.Module, lr: float = 0.01) -> torch.optim.SGD:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    net(torch.rand(2, 1, 32, 32)).mean().backward()
    opt.step()
    return opt


def test_stage2_loads_stage1_optimizer_momentum_keeping_its_own_hyperparameters(tmp_path):
    torch.manual_seed(0)
    src = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    src_opt = _sgd_with_momentum(src)
    torch.save(src.state_dict(), tmp_path / "model.pt")
    torch.save(src_opt.state_dict(), tmp_path / "optimizer.pt")
    student, teacher = UNet2D(1, 4, features=(4, 8, 8, 8, 8)), UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
    load_pretrained(str(tmp_path / "model.pt"), student, teacher, optimizer=opt)
    for p_src, p in zip(src.parameters(), student.parameters()):
        assert torch.equal(p_src, p)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], src_opt.state[p_src]["momentum_buffer"])
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["initial_lr"] == 0.05
    assert scheduler.base_lrs == [0.05]
    # the official {"net", "opt"} checkpoint carries both
    torch.save({"net": src.state_dict(), "opt": src_opt.state_dict()}, tmp_path / "official.pth")
    other = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    load_pretrained(str(tmp_path / "official.pth"), student, optimizer=other)
    assert all("momentum_buffer" in other.state[p] for p in student.parameters())


def test_bundle_configs_load_stage1_momentum_for_acdc_not_la(tmp_path):
    assert _parser(tmp_path, "train.json").get_parsed_content("load_pretrain_optimizer") is True
    assert _parser(tmp_path, "train.json", "train_la.json").get_parsed_content("load_pretrain_optimizer") is False


def test_stage_plan(tmp_path):
    pre = tmp_path / "models" / "pretrain"
    weights = str(pre / "model.pt")
    assert stages_to_run("all", pre, weights) == ["pretrain", "selftrain"]
    assert stages_to_run("pretrain", pre, weights) == ["pretrain"]
    assert stages_to_run("selftrain", pre, weights) == ["selftrain"]
    assert stages_to_run("all", pre, "") == ["selftrain"]  # random initialisation: stage 1 not needed
    assert stages_to_run("all", pre, str(tmp_path / "official.pth")) == ["selftrain"]
    pre.mkdir(parents=True)
    (pre / "model.pt").write_bytes(b"x")  # stage 1 finished
    assert stages_to_run("all", pre, weights) == ["selftrain"]
    assert stages_to_run("all", pre, weights, resume=False) == ["selftrain"]
    assert stages_to_run("pretrain", pre, weights) == []
    assert stages_to_run("pretrain", pre, weights, resume=False) == ["pretrain"]
    with pytest.raises(ValueError, match="stage"):
        stages_to_run("both", pre, weights)


def _tiny_pretrain_trainer(net, opt, iterations=2):
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(4, 1, 32, 32, generator=g), "label": torch.randint(0, 4, (4, 1, 32, 32), generator=g)}
               for _ in range(iterations)]
    return BCPTrainer(device="cpu", max_epochs=1, train_data_loader=batches, network=net, optimizer=opt,
                      loss_function=MaskedDiceCELoss(), stage="pretrain", seed=0, decollate=False)


def test_run_pretrain_writes_the_selected_weights_and_momentum_then_marks_the_stage_finished(tmp_path):
    torch.manual_seed(0)
    net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    # what stage 1's validation saved at its best epoch
    best_net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    best_opt = _sgd_with_momentum(best_net)
    tmp_path.mkdir(exist_ok=True)
    torch.save({"model": best_net.state_dict(), "optimizer": best_opt.state_dict()}, tmp_path / "best_model.pt")
    finished = []
    path = run_pretrain(_tiny_pretrain_trainer(net, opt), tmp_path, {"model": net, "optimizer": opt},
                        on_finished=finished.append)
    assert path == str(tmp_path / "model.pt") and finished == [path]
    weights = torch.load(path, weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in best_net.state_dict().items())
    momentum = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert momentum["state"] and momentum["param_groups"] == best_opt.state_dict()["param_groups"]
    assert stages_to_run("all", tmp_path, path) == ["selftrain"]
    # select_on="last": the final weights are the trained network's
    last_dir = tmp_path / "last"
    run_pretrain(_tiny_pretrain_trainer(net, opt), last_dir, {"model": net, "optimizer": opt}, select_on="last")
    weights = torch.load(last_dir / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert run_pretrain(None, tmp_path, {}) is None


# ---------------------------------------------------------------------------------------------- AMP switch
@pytest.mark.parametrize("value, expected", [("false", False), (False, False), ("False", False), ("true", True),
                                             (True, True)])
def test_amp_switch_accepts_cli_spellings(tmp_path, value, expected):
    assert _parser(tmp_path, "train.json", amp=value).get_parsed_content("use_amp") is expected


# ---------------------------------------------------------------------------------------------- benchmark tool
def test_benchmark_aggregates_seeds_and_the_share_of_the_gap_closed():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_bcp", REPO / "tools" / "benchmark_bcp.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = bench.plan_runs(["labeled", "bcp", "full"], [2], [1, 2, 3], 40)
    assert [(r["arm"], r["k"], r["seed"]) for r in runs][:3] == [("labeled", 2, 1), ("labeled", 2, 2), ("labeled", 2, 3)]
    assert {(r["arm"], r["k"]) for r in runs} == {("labeled", 2), ("bcp", 2), ("full", 40)} and len(runs) == 9
    dice = {"labeled": [0.5, 0.6, 0.7], "bcp": [0.7, 0.8, 0.9], "full": [0.9, 0.9, 0.9]}
    records = [{**r, "mean": {"dice": dice[r["arm"]][r["seed"] - 1]}, "train_seconds": 1.0} for r in runs]
    rows = {r["arm"]: r for r in bench.aggregate(records)}
    assert rows["bcp"]["dice"]["n"] == 3 and rows["bcp"]["dice"]["mean"] == pytest.approx(0.8)
    assert rows["bcp"]["dice"]["sd"] == pytest.approx(0.1)  # sample sd
    assert rows["bcp"]["gap_closed"] == pytest.approx((0.8 - 0.6) / (0.9 - 0.6))
    assert rows["labeled"]["gap_closed"] == pytest.approx(0.0) and math.isnan(rows["full"]["gap_closed"])


def test_an_empty_labeled_loader_is_reported_before_training(tmp_path):
    net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=4, drop_last=True)
    trainer = BCPTrainer(device="cpu", max_epochs=1, train_data_loader=loader, network=net, optimizer=opt,
                         loss_function=MaskedDiceCELoss(), stage="pretrain", decollate=False)
    with pytest.raises(ValueError, match="labeled data loader yields no batch"):
        run_pretrain(trainer, tmp_path, {"model": net, "optimizer": opt})
