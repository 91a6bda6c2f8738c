"""The shared training step (custom_components.engines.step.CustomStepTrainer) of every trainer of the project.

For BCP (pre-training, self-training), LViT (semi-supervised stage), VoCo pre-training and MONAI's stock
SupervisedTrainer as UniverSeg uses it (episode prepare_batch), on tiny networks and data:

- the iteration events fire in MONAI's order (FORWARD_COMPLETED, LOSS_COMPLETED, BACKWARD_COMPLETED, MODEL_COMPLETED);
- a BACKWARD_COMPLETED handler sees the gradients before the optimizer step (weights unchanged at that point, and the
  SGD step then moves them by exactly -lr * those gradients);

and for the base itself: the same numbers as MONAI's SupervisedTrainer (with gradient accumulation too), gradient
clipping between backward and step with the AMP scaler unscaled first, autocast with the engine's device type, and
the VoCo bundle's ``amp`` and ``use_checkpoint`` flags changing what runs.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from conftest import REPO
from custom_components.engines.bcp import BCPTrainer
from custom_components.engines.ema import make_teacher
from custom_components.engines.fewshot import PrepareEpisodeBatch
from custom_components.engines.lvit import EPIStore, LViTSemiTrainer
from custom_components.engines.step import CustomStepTrainer
from custom_components.engines.voco import VoCoTrainer
from custom_components.losses import MaskedDiceCELoss
from custom_components.losses.lvit import BalancedBCEDiceLoss
from custom_components.losses.voco import VoCoLoss
from custom_components.networks.bcp_unet import UNet2D
from custom_components.networks.voco import VoCoHead

torch.set_num_threads(1)

LR = 0.05
STEP_EVENTS = [IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED,
               IterationEvents.MODEL_COMPLETED]
EXPECTED = ["started", "forward_completed", "loss_completed", "backward_completed", "model_completed", "completed"]
VOCO_CFG = REPO / "bundles" / "voco_btcv_segmentation" / "configs"


# ---------------------------------------------------------------------------------------------------------------------
# tiny trainers
# ---------------------------------------------------------------------------------------------------------------------
def _bcp_stream(n, labeled=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {"image": torch.rand(4, 1, 32, 32, generator=g)}
        if labeled:
            b["label"] = torch.randint(0, 4, (4, 1, 32, 32), generator=g).float()
        out.append(b)
    return out


def _bcp(stage: str):
    net = UNet2D(1, 4, features=(4, 8, 8, 8, 8))
    teacher = make_teacher(net) if stage == "selftrain" else None
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    return BCPTrainer(device="cpu", max_epochs=1, train_data_loader=_bcp_stream(2), network=net, optimizer=opt,
                      loss_function=MaskedDiceCELoss(), unlabeled_data_loader=_bcp_stream(2, False, 1),
                      teacher=teacher, stage=stage, seed=0, decollate=False)


class _TextNet(nn.Module):
    """Image + optional text tokens ``[B, L, 4]`` -> one logit map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.text = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.Linear(4, 1)

    def forward(self, x, text=None):
        y = self.bn(self.conv(x))
        return y if text is None else y + self.text(text).mean(1)[:, :, None, None]


def _lvit_stream(n, labeled=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        b = {"image": torch.rand(2, 1, 16, 16, generator=g), "text_emb": torch.rand(2, 3, 4, generator=g)}
        if labeled:
            b["label"] = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
        else:
            b["uid"] = [f"u{i}_{j}" for j in range(2)]
        out.append(b)
    return out


def _lvit():
    net = _TextNet()
    return LViTSemiTrainer(device="cpu", max_epochs=1, train_data_loader=_lvit_stream(2), network=net,
                           optimizer=torch.optim.SGD(net.parameters(), lr=LR), loss_function=BalancedBCEDiceLoss(),
                           unlabeled_data_loader=_lvit_stream(2, False, 1), epi_store=EPIStore(), labeled_epochs=0,
                           decollate=False)


def _voco_batches(n=2, num_crops=5, size=(64, 64)):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75]]])[:, : num_crops - 4]
    return [{"image": torch.rand(1, num_crops, 1, *size, generator=g), "position": labels} for _ in range(n)]


def _voco(amp=False, use_checkpoint=False, **kwargs):
    """A 2D VoCoHead (the same Swin/encoder code as 3D, much cheaper on CPU)."""
    head = VoCoHead(feature_size=12, hidden_dim=16, out_dim=8, spatial_dims=2, use_checkpoint=use_checkpoint)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=LR)
    return VoCoTrainer(device="cpu", max_epochs=1, train_data_loader=_voco_batches(), network=head, optimizer=opt,
                       loss_function=VoCoLoss("repo"), amp=amp, **kwargs)


class _EpisodeNet(nn.Module):
    """UniverSeg's call signature: ``net(query, support_images, support_labels)`` -> query logits."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.s = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(2, 1, 1)

    def forward(self, query, support_images, support_labels):
        support = self.s(torch.cat([support_images, support_labels], 2).flatten(0, 1)).mean(0, keepdim=True)
        return self.q(query) + support


def _universeg():
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(2, 1, 16, 16, generator=g), "label": (torch.rand(2, 1, 16, 16, generator=g) > .5)
                .float(), "support_images": torch.rand(2, 3, 1, 16, 16, generator=g),
                "support_labels": (torch.rand(2, 3, 1, 16, 16, generator=g) > .5).float()} for _ in range(2)]
    net = _EpisodeNet()
    return SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=batches, network=net,
                             optimizer=torch.optim.SGD(net.parameters(), lr=LR), loss_function=nn.BCEWithLogitsLoss(),
                             prepare_batch=PrepareEpisodeBatch(), decollate=False)


TRAINERS = {
    "bcp_pretrain": lambda: _bcp("pretrain"),
    "bcp_selftrain": lambda: _bcp("selftrain"),
    "lvit_semi": _lvit,
    "voco_pretrain": _voco,
    "universeg_stock": _universeg,
}


# ---------------------------------------------------------------------------------------------------------------------
# events and gradients
# ---------------------------------------------------------------------------------------------------------------------
class StepRecorder:
    """Events of each iteration, the trained parameters at ITERATION_STARTED, BACKWARD_COMPLETED (with their
    gradients) and ITERATION_COMPLETED, and the gradients already present at FORWARD_COMPLETED."""

    def __init__(self, engine) -> None:
        self.params = [p for group in engine.optimizer.param_groups for p in group["params"]]
        self.iterations: list[dict] = []
        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        for event in STEP_EVENTS:
            engine.add_event_handler(event, self._event, event)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._forward)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._loss)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._backward)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)

    def _values(self):
        return [p.detach().clone() for p in self.params]

    def _started(self, engine):
        self.iterations.append({"events": ["started"], "start": self._values()})

    def _event(self, engine, event):
        self.iterations[-1]["events"].append(event.value)

    def _forward(self, engine):
        cur = self.iterations[-1]
        cur["stale_grads"] = [p.grad for p in self.params if p.grad is not None and p.grad.abs().sum() > 0]
        cur["loss_at_forward"] = Keys.LOSS in engine.state.output

    def _loss(self, engine):
        loss = engine.state.output[Keys.LOSS]
        self.iterations[-1]["loss_grad_fn"] = isinstance(loss, torch.Tensor) and loss.grad_fn is not None

    def _backward(self, engine):
        cur = self.iterations[-1]
        cur["at_backward"] = self._values()
        cur["grads"] = [None if p.grad is None else p.grad.detach().clone() for p in self.params]

    def _completed(self, engine):
        self.iterations[-1]["events"].append("completed")
        self.iterations[-1]["end"] = self._values()


@pytest.mark.parametrize("name", list(TRAINERS))
def test_events_in_monai_order_and_gradients_seen_before_the_step(name):
    torch.manual_seed(0)
    trainer = TRAINERS[name]()
    rec = StepRecorder(trainer)
    trainer.run()
    assert len(rec.iterations) == 2
    for it in rec.iterations:
        assert it["events"] == EXPECTED
        assert it["stale_grads"] == []  # zero-grad ran before the forward
        assert not it["loss_at_forward"] and it["loss_grad_fn"]  # the loss comes after FORWARD_COMPLETED
        with_grad = [i for i, g in enumerate(it["grads"]) if g is not None]
        assert len(with_grad) == len(rec.params)  # every trained parameter has its gradient at BACKWARD_COMPLETED
        assert any(it["grads"][i].abs().sum() > 0 for i in with_grad)
        for before, seen in zip(it["start"], it["at_backward"]):
            assert torch.equal(before, seen)  # the optimizer has not stepped yet
        for seen, grad, after in zip(it["at_backward"], it["grads"], it["end"]):
            torch.testing.assert_close(after, seen - LR * grad)  # ...and then steps with exactly those gradients
    if isinstance(trainer, CustomStepTrainer):  # (MONAI's own step leaves the loss attached to its graph)
        assert not trainer.state.output[Keys.LOSS].requires_grad  # outputs are detached after the step


def test_voco_output_holds_its_logged_terms_and_ema_state_for_checkpoints():
    torch.manual_seed(0)
    trainer = _voco()
    teacher = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in trainer.network.student.state_dict().items()}
    trainer.run()
    out = trainer.state.output
    assert set(out) == {"loss", "loss_pos", "loss_neg", "loss_reg", "accuracy"}
    assert all(v.ndim == 0 and not v.requires_grad for v in out.values())
    torch.testing.assert_close(out["loss"], out["loss_pos"] + out["loss_neg"] + out["loss_reg"])
    assert trainer.ema.step == 2 and trainer.ema_state.state_dict() == {"step": 2}
    assert 0 <= out["accuracy"].item() <= 1
    assert trainer.optim_set_to_none  # the official code's zero_grad(set_to_none=True) by default
    key = "swinViT.patch_embed.proj.weight"  # the teacher moved towards the (pre-step) student
    assert not torch.equal(trainer.teacher.state_dict()[key], teacher[key])
    assert not torch.equal(trainer.network.student.state_dict()[key], student[key])
    single = VoCoHead(feature_size=12, hidden_dim=16, out_dim=8, spatial_dims=2, with_teacher=False)
    cvpr = VoCoTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=single,
                       optimizer=torch.optim.SGD(single.parameters(), lr=LR), loss_function=VoCoLoss("cvpr"))
    assert cvpr.ema is None and cvpr.ema_state.state_dict() == {}
    with pytest.raises(ValueError, match="iteration_update"):
        _voco(iteration_update=lambda engine, batch: None)


# ---------------------------------------------------------------------------------------------------------------------
# the base step against MONAI's
# ---------------------------------------------------------------------------------------------------------------------
def _linear_run(cls, accumulation_steps=1, epoch_length=3, **kwargs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(epoch_length)]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    trainer = cls(device="cpu", max_epochs=2, train_data_loader=data, network=net, optimizer=opt,
                  loss_function=nn.MSELoss(), accumulation_steps=accumulation_steps, decollate=False, **kwargs)
    trainer.run()
    return [p.detach() for p in net.parameters()], len(steps), trainer


@pytest.mark.parametrize("accumulation_steps", [1, 2])
def test_base_step_reproduces_monai_supervised_trainer(accumulation_steps):
    ours, n_ours, _ = _linear_run(CustomStepTrainer, accumulation_steps)
    monai, n_monai, _ = _linear_run(SupervisedTrainer, accumulation_steps)
    assert n_ours == n_monai == (6 if accumulation_steps == 1 else 4)  # 2 epochs of 3: steps after 2 and 3 (flush)
    for a, b in zip(ours, monai):
        assert torch.equal(a, b)


def test_grad_clip_between_backward_and_step_and_unscaled_first_with_amp():
    """With a real (CPU) GradScaler the gradients are scaled at BACKWARD_COMPLETED; the SGD step must move the
    weights by lr * (unscaled gradient clipped to norm 0.01)."""
    clip, scale = 0.01, 2.0**10
    for amp in (False, True):
        torch.manual_seed(0)
        net = nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        data = [(torch.randn(8, 3) * 10, torch.randn(8, 1))]
        trainer = CustomStepTrainer(device="cpu", max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
                                    loss_function=nn.MSELoss(), decollate=False, amp=amp, grad_clip=clip)
        if amp:
            trainer.add_event_handler(Events.STARTED, lambda e: setattr(e, "scaler", torch.amp.GradScaler(
                "cpu", init_scale=scale)))
        seen = {}
        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, lambda e: seen.update(
            w=[p.detach().clone() for p in net.parameters()], g=[p.grad.clone() for p in net.parameters()]))
        trainer.run()
        raw = torch.cat([g.flatten() for g in seen["g"]]).norm() / (scale if amp else 1.0)
        assert raw > 10 * clip  # clipping matters
        move = torch.cat([(w - p.detach()).flatten() for w, p in zip(seen["w"], net.parameters())])
        torch.testing.assert_close(move.norm(), torch.tensor(clip), rtol=1e-3, atol=0)


def test_autocast_follows_the_engine_device_type_and_the_amp_flag():
    for amp in (False, True):
        net = nn.Linear(3, 1)
        states = []
        net.register_forward_hook(lambda m, i, o: states.append((torch.is_autocast_enabled("cpu"), o.dtype)))
        CustomStepTrainer(device="cpu", max_epochs=1, train_data_loader=[(torch.rand(2, 3), torch.rand(2, 1))],
                          network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=nn.MSELoss(),
                          decollate=False, amp=amp).run()
        # MONAI's own step autocasts "cuda" only, i.e. nothing on a CPU engine
        assert states == [(amp, torch.bfloat16 if amp else torch.float32)]


def test_compile_keeps_metatensor_meta_of_the_outputs():
    from monai.data import MetaTensor

    torch.manual_seed(0)
    net = nn.Conv2d(1, 1, 1)
    x = MetaTensor(torch.rand(2, 1, 4, 4), meta={"filename_or_obj": "a.nii"})
    y = MetaTensor(torch.rand(2, 1, 4, 4), meta={"filename_or_obj": "b.nii"})
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(type(i[0])))
    trainer = CustomStepTrainer(device="cpu", max_epochs=1, train_data_loader=[(x, y)], network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=nn.MSELoss(),
                                decollate=False, compile=True, compile_kwargs={"backend": "eager"})
    with pytest.warns(UserWarning, match="MetaTensor"):
        trainer.run()
    assert seen == [torch.Tensor]  # the network saw plain tensors
    out = trainer.state.output
    assert out[Keys.IMAGE].meta["filename_or_obj"] == "a.nii" and out[Keys.PRED].meta["filename_or_obj"] == "a.nii"
    assert out[Keys.LABEL].meta["filename_or_obj"] == "b.nii"


# ---------------------------------------------------------------------------------------------------------------------
# VoCo flags (issue 14): amp and use_checkpoint change what runs
# ---------------------------------------------------------------------------------------------------------------------
def _voco_bundle_trainer(tmp_path, **overrides):
    """The pre-training trainer of the bundle (pretrain.json + quick.json), with a 2D network and in-memory crops."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(VOCO_CFG / "pretrain.json"), str(VOCO_CFG / "quick.json")])
    settings = {"bundle_root": str(tmp_path), "train#dataloader": "$[]", "train#handlers": "$[]",
                "pretrain_total_iters": 1, "pretrain_epoch_length": 1, "network_def#spatial_dims": 2, **overrides}
    for k, v in settings.items():
        parser[k] = v
    trainer = parser.get_parsed_content("train#trainer")
    trainer.data_loader = _voco_batches(1, num_crops=6)
    return trainer


@pytest.mark.parametrize("amp", [False, True])
def test_voco_amp_flag_runs_the_forward_under_autocast(tmp_path, amp):
    trainer = _voco_bundle_trainer(tmp_path, amp=amp)
    seen = []
    trainer.network.student.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    trainer.teacher.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    trainer.run()
    expected = (True, torch.bfloat16) if amp else (False, torch.float32)
    assert seen == [expected, expected]  # student and teacher
    assert torch.isfinite(trainer.state.output["loss"])


def test_voco_use_checkpoint_runs_the_swin_blocks_through_torch_checkpoint(tmp_path, monkeypatch):
    import torch.utils.checkpoint as checkpoint

    assert json.loads((VOCO_CFG / "pretrain.json").read_text())["use_checkpoint"] is True  # the full recipe
    original = checkpoint.checkpoint
    calls = []

    def counting(fn, *args, **kwargs):
        calls.append((type(getattr(fn, "__self__", None)).__name__, torch.is_grad_enabled()))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "checkpoint", counting)
    params = {}
    for flag in (False, True):
        calls.clear()
        torch.manual_seed(0)
        trainer = _voco_bundle_trainer(tmp_path, use_checkpoint=flag)
        trainer.run()
        params[flag] = [p.detach().clone() for p in trainer.network.student.parameters()]
        if not flag:
            assert calls == []
        else:
            # 4 stages x 2 blocks x 2 parts, for the student (with gradient) and the teacher (without)
            assert {c[0] for c in calls} == {"SwinTransformerBlock"}
            assert sum(g for _, g in calls) == 16 and sum(not g for _, g in calls) == 16
    for a, b in zip(params[False], params[True]):
        torch.testing.assert_close(a, b)  # recomputation changes memory, not the result
