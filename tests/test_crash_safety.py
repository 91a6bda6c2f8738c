"""Training survives a crash: checkpoints and ``model.pt`` are written whole or not at all, resume skips a damaged
checkpoint, and starting over keeps the earlier run's checkpoints aside instead of mixing them with the new run's.

The process tests run a small script (a ``SupervisedTrainer`` with ``make_resumable`` and an
``AtomicCheckpointSaver`` keeping the best ``model.pt``, as the bundles' train.json configs do) in a subprocess. The
script's ``torch.save`` writes half of the file and SIGKILLs its own process at the save named by
``KILL_DURING_SAVE`` (``interval:N``: the N-th interval checkpoint; ``model:N``: the N-th ``model.pt``), which is
what a ``kill -9`` (or the out-of-memory killer) in the middle of a save does.
"""

from __future__ import annotations

import json
import logging
import os
import pydoc
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from conftest import REPO, bundle_env
from custom_components.engines import AtomicCheckpointSaver, latest_checkpoint, make_resumable
from custom_components.engines.training import move_previous_run

SCRIPT = r'''
import io, logging, os, signal, sys

import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from custom_components.engines import AtomicCheckpointSaver, make_resumable

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
ckpt_dir, max_epochs, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
kill_kind, _, kill_at = os.environ.get("KILL_DURING_SAVE", "").partition(":")
real_save, count = torch.save, {"interval": 0, "model": 0}


def save(obj, f, *args, **kwargs):
    kind = "interval" if isinstance(obj, dict) and "trainer" in obj else "model"
    count[kind] += 1
    if kind == kill_kind and count[kind] == int(kill_at):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
        else:
            f.write(half)
            f.flush()
        print(f"KILLED DURING {kind} SAVE {count[kind]}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)


torch.save = save
torch.manual_seed(0)
net = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
data = [{"image": torch.randn(4), "label": torch.randn(1)} for _ in range(4)]
trainer = SupervisedTrainer(
    device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=DataLoader(data, batch_size=2),
    network=net, optimizer=opt, loss_function=torch.nn.MSELoss(), epoch_length=2,
)
trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=float(e.state.epoch)))
AtomicCheckpointSaver(
    save_dir=ckpt_dir, save_dict={"model": net}, save_key_metric=True, key_metric_name="score",
    key_metric_filename="model.pt",
).attach(trainer)
resumed = make_resumable(trainer, ckpt_dir, {"model": net, "optimizer": opt, "lr_scheduler": sched}, resume=resume)
print(f"RESUMED FROM {os.path.basename(resumed) if resumed else None}", flush=True)
trainer.run()
print(f"DONE epoch={trainer.state.epoch} iteration={trainer.state.iteration}", flush=True)
'''


def ckpt(epoch: int) -> str:
    return f"checkpoint_checkpoint_epoch={epoch}.pt"


@pytest.fixture
def train(tmp_path):
    """``train(max_epochs, resume=True, kill=None)``: run the script on ``tmp_path/models``; the finished process."""
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)

    def run(max_epochs: int, resume: bool = True, kill: str | None = None) -> subprocess.CompletedProcess:
        env = bundle_env()
        env["OMP_NUM_THREADS"] = "1"
        env.pop("KILL_DURING_SAVE", None)
        if kill:
            env["KILL_DURING_SAVE"] = kill
        cmd = [sys.executable, str(script), str(tmp_path / "models"), str(max_epochs), "1" if resume else "0"]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)

    return run


def finished(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def interval_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("checkpoint*.pt"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# kill during which save | interval checkpoints left | resumed from | model.pt then holds the weights of
KILLS = [
    ("interval:1", [], None, None),  # the first checkpoint ever: nothing to resume, model.pt of epoch 1 intact
    ("interval:2", [ckpt(1)], ckpt(1), None),  # the previous checkpoint survives the kill and is resumed from
    ("model:2", [ckpt(1)], ckpt(1), ckpt(1)),  # the best-model rewrite: the previous model.pt survives
]


@pytest.mark.parametrize("kill, left, resumed_from, model_like", KILLS, ids=[k[0] for k in KILLS])
def test_sigkill_during_a_save_then_resume_to_the_end(train, tmp_path, kill, left, resumed_from, model_like):
    models = tmp_path / "models"
    proc = train(4, kill=kill)
    assert proc.returncode == -signal.SIGKILL, (proc.stdout + proc.stderr)[-4000:]
    assert f"KILLED DURING {kill.replace(':', ' SAVE ')}" in proc.stdout
    # no file of a final name is ever partial, and the previous ones are still there
    assert interval_files(models) == left
    for name in left:
        torch.load(models / name, weights_only=True)
    model = torch.load(models / "model.pt", weights_only=True)  # readable, whichever save was killed
    if model_like is not None:
        assert same_weights(model, torch.load(models / model_like, weights_only=True)["model"])

    out = finished(train(4))
    assert f"RESUMED FROM {resumed_from}" in out
    assert "DONE epoch=4 iteration=8" in out
    assert interval_files(models) == [ckpt(4)]
    assert not list(models.glob(".*.tmp")), "the unfinished save of the killed run is cleaned up"
    final = torch.load(models / ckpt(4), weights_only=True)
    assert final["trainer"]["iteration"] == 8
    assert same_weights(torch.load(models / "model.pt", weights_only=True), final["model"])


def test_truncated_newest_checkpoint_is_skipped_and_training_resumes_from_the_previous(train, tmp_path):
    models = tmp_path / "models"
    finished(train(1))
    good = (models / ckpt(1)).read_bytes()
    (models / ckpt(2)).write_bytes(good[: len(good) // 2])  # what a crash during a non-atomic save leaves
    out = finished(train(3))
    assert f"skipping unreadable checkpoint {models / ckpt(2)}" in out
    assert f"RESUMED FROM {ckpt(1)}" in out and "DONE epoch=3 iteration=6" in out
    assert interval_files(models) == [ckpt(3)]


def test_starting_over_moves_the_old_run_aside_and_the_next_resume_takes_the_new_run(train, tmp_path):
    models = tmp_path / "models"
    finished(train(5))  # the old run, finished at a higher step than the new one will reach
    old_model = (models / "model.pt").read_bytes()
    out = finished(train(2, resume=False))
    assert "RESUMED FROM None" in out and "DONE epoch=2 iteration=4" in out
    aside = list(models.glob("previous_run_*"))
    assert len(aside) == 1 and interval_files(aside[0]) == [ckpt(5)]
    assert f"moved the previous run's checkpoints {ckpt(5)} to {aside[0]}" in out
    assert interval_files(models) == [ckpt(2)], "the new run's checkpoint is kept, the old one is not in the way"
    assert (models / "model.pt").read_bytes() != old_model  # the new run's best model replaced the old one
    out = finished(train(3))
    assert f"RESUMED FROM {ckpt(2)}" in out and "DONE epoch=3 iteration=6" in out
    assert interval_files(models) == [ckpt(3)] and interval_files(aside[0]) == [ckpt(5)]


# ---------------------------------------------------------------------------------------------------------------------
# in-process checks of the pieces
# ---------------------------------------------------------------------------------------------------------------------
def _checkpoint_bytes(value: float) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.full((8,), value)}, "trainer": {"epoch": 1, "iteration": 2}}, buf)
    return buf.getvalue()


# how the newest checkpoint is damaged
DAMAGE = [
    ("truncated", lambda data: data[: len(data) // 2]),
    ("empty", lambda data: b""),
    ("zero-filled", lambda data: bytes(len(data))),
    ("index cut off", lambda data: data[:-10]),
]


@pytest.mark.parametrize("damage", [d[1] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_latest_checkpoint_skips_an_unreadable_one_with_a_warning_naming_it(tmp_path, caplog, damage):
    for epoch in (1, 2):
        (tmp_path / ckpt(epoch)).write_bytes(_checkpoint_bytes(epoch))
    (tmp_path / ckpt(3)).write_bytes(damage(_checkpoint_bytes(3)))
    (tmp_path / "model.pt").write_bytes(_checkpoint_bytes(9))  # the best-model file is never a resume point
    with caplog.at_level(logging.WARNING, logger="custom_components.engines.training"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / ckpt(2))
    assert any(str(tmp_path / ckpt(3)) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_latest_checkpoint_without_a_readable_one_starts_from_the_beginning(tmp_path, caplog):
    (tmp_path / ckpt(1)).write_bytes(_checkpoint_bytes(1)[:100])
    with caplog.at_level(logging.WARNING, logger="custom_components.engines.training"):
        assert latest_checkpoint(tmp_path) is None
    assert ckpt(1) in caplog.text and "starting from the beginning" in caplog.text


def _engine_with(saver_kwargs: dict, folder: Path):
    """An ignite engine whose 'training' adds 1 to a weight each epoch and whose score rises each epoch."""
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _step(e):
        with torch.no_grad():
            net.weight.add_(1.0)
        e.state.metrics["score"] = float(e.state.epoch)

    AtomicCheckpointSaver(save_dir=str(folder), save_dict={"model": net}, **saver_kwargs).attach(engine)
    return engine


# saver arguments (as the bundle configs use them) | the file the first epoch writes
SAVES = [
    ("interval", {"save_interval": 1, "n_saved": 1}, "model_epoch=1.pt"),
    ("best model", {"save_key_metric": True, "key_metric_name": "score", "key_metric_filename": "model.pt"}, "model.pt"),
    ("final model", {"save_final": True, "final_filename": "model.pt"}, "model.pt"),
]


@pytest.mark.parametrize("kwargs, first", [s[1:] for s in SAVES], ids=[s[0] for s in SAVES])
def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, kwargs, first):
    engine = _engine_with(kwargs, tmp_path)
    engine.run([0], max_epochs=1)
    before = (tmp_path / first).read_bytes()
    torch.load(tmp_path / first, weights_only=True)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / first).stat().st_mode & 0o777 == 0o666 & ~umask, "as readable as a file written in place"
    real_save = torch.save

    def failing_save(obj, f, *args, **kw):
        real_save(obj, f, *args, **kw)
        raise OSError("No space left on device")  # after writing: the file is complete but must not be used

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=2)
    assert (tmp_path / first).read_bytes() == before, "the previous file is replaced or removed only by a complete one"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first], "no partial file is left"


def test_make_resumable_without_resume_moves_only_interval_checkpoints(tmp_path):
    for epoch in (3, 7):
        (tmp_path / ckpt(epoch)).write_bytes(_checkpoint_bytes(epoch))
    (tmp_path / "model.pt").write_bytes(b"best")
    (tmp_path / "pretrain").mkdir()
    first = move_previous_run(tmp_path)
    second = move_previous_run(tmp_path)  # nothing left to move
    assert first is not None and first.parent == tmp_path and first.name.startswith("previous_run_")
    assert second is None
    assert interval_files(first) == [ckpt(3), ckpt(7)] and interval_files(tmp_path) == []
    assert (tmp_path / "model.pt").read_bytes() == b"best" and (tmp_path / "pretrain").is_dir()
    (tmp_path / ckpt(1)).write_bytes(_checkpoint_bytes(1))
    third = move_previous_run(tmp_path)  # a second start-over within the same second gets its own folder
    assert third is not None and third != first and interval_files(third) == [ckpt(1)]
    assert interval_files(first) == [ckpt(3), ckpt(7)]


def test_make_resumable_removes_unfinished_saves(tmp_path):
    net = torch.nn.Linear(2, 1)
    tmp_path.joinpath(f".{ckpt(2)}.abc123.tmp").write_bytes(b"half")
    tmp_path.joinpath(".model.pt.xyz.tmp").write_bytes(b"half")
    tmp_path.joinpath("notes.tmp").write_bytes(b"user file")
    engine = Engine(lambda e, b: None)
    assert make_resumable(engine, tmp_path, {"model": net}) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


def _saver_targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if str(node.get("_target_", "")).endswith("CheckpointSaver") else []
        return found + [t for v in node.values() for t in _saver_targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _saver_targets(v)]
    return []


TRAINING_CONFIGS = sorted(
    str(p.relative_to(REPO)) for name in ("train.json", "pretrain.json") for p in REPO.glob(f"bundles/*/configs/{name}")
    if _saver_targets(json.loads(p.read_text()))
)


@pytest.mark.parametrize("config", TRAINING_CONFIGS)
def test_bundle_configs_save_weights_through_the_atomic_saver(config):
    targets = _saver_targets(json.loads((REPO / config).read_text()))
    assert targets and all(t == "custom_components.engines.AtomicCheckpointSaver" for t in targets), targets
    assert pydoc.locate(targets[0]) is AtomicCheckpointSaver


def test_every_training_config_is_covered():
    """Each bundle's train.json (BCP's pretrain.json uses its handlers) and VoCo's pretrain.json has a saver."""
    names = {Path(c).parts[1] for c in TRAINING_CONFIGS if c.endswith("/train.json")}
    assert names == {p.parent.parent.name for p in REPO.glob("bundles/*/configs/metadata.json")}
    assert "bundles/voco_btcv_segmentation/configs/pretrain.json" in TRAINING_CONFIGS
