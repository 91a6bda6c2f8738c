"""Resume and distributed helpers used by every training config."""

from __future__ import annotations

import torch

from custom_components.engines.training import (
    cleanup_distributed,
    distributed_device,
    init_distributed,
    is_main_process,
    latest_checkpoint,
    wrap_ddp,
)


def test_latest_checkpoint_picks_highest_step(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for step in (2, 10, 9):
        torch.save({"trainer": {"iteration": step}}, tmp_path / f"checkpoint_checkpoint_epoch={step}.pt")
    torch.save({}, tmp_path / "model.pt")  # the best-model file is never a resume point
    assert latest_checkpoint(tmp_path).endswith("checkpoint_checkpoint_epoch=10.pt")


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is False
    net = torch.nn.Linear(2, 2)
    assert wrap_ddp(net, torch.device("cpu")) is net
    assert is_main_process()
    assert distributed_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    cleanup_distributed()
