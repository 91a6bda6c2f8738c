"""Resume and distributed helpers used by every training config."""

from __future__ import annotations

import torch

from custom_components.engines.training import (
    cleanup_distributed,
    distributed_device,
    init_distributed,
    is_main_process,
    latest_checkpoint,
    make_optimizer,
    wrap_ddp,
)


def test_latest_checkpoint_picks_highest_step(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 9):
        (tmp_path / f"checkpoint_checkpoint_epoch={step}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")  # the best-model file is never a resume point
    assert latest_checkpoint(tmp_path).endswith("checkpoint_checkpoint_epoch=10.pt")


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is False
    net = torch.nn.Linear(2, 2)
    assert wrap_ddp(net, torch.device("cpu")) is net
    assert is_main_process()
    assert distributed_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    cleanup_distributed()


def test_make_optimizer():
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = make_optimizer(params, "sgd", lr=0.1, momentum=0.8, weight_decay=0.0)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8 and sgd.defaults["lr"] == 0.1
    assert isinstance(make_optimizer(params, "adamw", lr=1e-3), torch.optim.AdamW)
    try:
        make_optimizer(params, "rmsprop")
    except ValueError as e:
        assert "rmsprop" in str(e)
    else:
        raise AssertionError("an unknown optimizer name must raise")
