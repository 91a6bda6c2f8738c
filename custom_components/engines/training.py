"""Helpers for resumable and multi-process training, kept out of the JSON configs.

- :func:`latest_checkpoint` finds the newest readable interval checkpoint so that an interrupted run resumes (model,
  optimizer, scheduler and engine state); :func:`make_resumable` saves those checkpoints through
  :class:`~.checkpoint.AtomicCheckpointSaver` (a crash during a save never costs the previous checkpoint) and, when
  starting over, moves the previous run's checkpoints aside;
- :func:`init_distributed`, :func:`distributed_device`, :func:`wrap_ddp` and :func:`is_main_process` let one
  ``multi_gpu_train.json`` run under ``torchrun`` on GPUs (NCCL) and on CPUs (Gloo) alike.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events

__all__ = [
    "latest_checkpoint",
    "make_resumable",
    "move_previous_run",
    "init_distributed",
    "cleanup_distributed",
    "distributed_device",
    "wrap_ddp",
    "is_main_process",
]

logger = logging.getLogger(__name__)

_STEP = re.compile(r"[=_](\d+)\.pt$")


def _interval_checkpoints(folder: Path, prefix: str) -> list[tuple[int, Path]]:
    """``(step, path)`` of the interval checkpoints (``<prefix>*=<step>.pt``) directly in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.glob(f"{prefix}*.pt") if (m := _STEP.search(p.name))]
    return sorted(found, key=lambda item: (item[0], item[1].name), reverse=True)


def _unreadable(path: Path) -> str | None:
    """Why ``torch.load`` (as MONAI's ``CheckpointLoader`` calls it) cannot read ``path``, or ``None`` if it can.

    The file is memory-mapped, so its tensors are not read: this catches what a crash leaves (a truncated or empty
    file, no zip index) without loading a large checkpoint twice."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure means the loader would fail too
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """Path of the readable interval checkpoint with the highest step in ``ckpt_dir`` (``<prefix>*=<step>.pt``), or
    ``None``.

    A checkpoint that cannot be read (e.g. truncated by a crash of a run saved without atomic writes) is skipped
    with a warning naming it, and the next older one is tried.
    """
    found = _interval_checkpoints(Path(ckpt_dir), prefix)
    for step, path in found:
        problem = _unreadable(path)
        if problem is None:
            logger.info(f"resuming from {path} (step {step})")
            return str(path)
        logger.warning(f"skipping unreadable checkpoint {path} ({problem}); trying an older one")
    if found:
        logger.warning(f"no readable checkpoint in {ckpt_dir}; starting from the beginning")
    return None


def make_resumable(
    trainer, ckpt_dir: str | os.PathLike, objects: dict, resume: bool = True, save_interval: int = 1,
    prefix: str = "checkpoint",
) -> str | None:
    """Save ``trainer``'s full state every ``save_interval`` epochs and, with ``resume``, continue from the newest one.

    Attaches an :class:`~.checkpoint.AtomicCheckpointSaver` (one interval checkpoint kept,
    ``<ckpt_dir>/<prefix>_checkpoint_epoch=N.pt``, holding ``objects`` — model, optimizer, scheduler — and the
    trainer's state; written to a temporary file and renamed when complete, its predecessor deleted only then) and,
    when a readable checkpoint exists (:func:`latest_checkpoint`), a ``CheckpointLoader`` that restores it at
    ``Events.STARTED`` so an interrupted run continues at the epoch and iteration where it stopped. Without
    ``resume``, the interval checkpoints of an earlier run are moved into ``<ckpt_dir>/previous_run_<time>/``
    (logged), so they neither replace nor outlive the new run's. Temporary files left by a killed save are removed.
    A config calls this from its ``run`` step rather than listing the two handlers in ``train#handlers``, because
    they refer to the trainer that owns those handlers.

    Returns:
        the checkpoint resumed from, or ``None``.
    """
    from monai.handlers import CheckpointLoader

    from .checkpoint import AtomicCheckpointSaver

    folder = Path(ckpt_dir)
    if is_main_process():
        _remove_partial_files(folder)
        if not resume:
            move_previous_run(folder, prefix)
    save_dict = {**objects, "trainer": trainer}
    path = latest_checkpoint(ckpt_dir, prefix) if resume else None
    if path is not None:
        device = next(iter(objects["model"].parameters())).device if "model" in objects else "cpu"
        CheckpointLoader(load_path=path, load_dict=save_dict, map_location=device).attach(trainer)
    AtomicCheckpointSaver(
        save_dir=str(ckpt_dir), save_dict=save_dict, file_prefix=prefix, save_interval=save_interval, n_saved=1,
        epoch_level=True,
    ).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=save_interval), _remove_stale_checkpoints, folder, prefix)
    return path


def move_previous_run(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """Move the interval checkpoints in ``ckpt_dir`` into a new ``<ckpt_dir>/previous_run_<YYYYmmdd-HHMMSS>/``.

    Called when a run starts over (``resume=False``): the earlier run's checkpoints are kept, out of the way of
    :func:`latest_checkpoint`. Other files (``model.pt``, sub-folders) stay where they are.

    Returns:
        the folder they were moved to, or ``None`` when there was none.
    """
    folder = Path(ckpt_dir)
    old = [p for _, p in _interval_checkpoints(folder, prefix)]
    if not old:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = folder / f"previous_run_{stamp}", 1
    while dest.exists():
        n += 1
        dest = folder / f"previous_run_{stamp}_{n}"
    dest.mkdir()
    for p in old:
        os.replace(p, dest / p.name)
    logger.warning(f"starting over (resume=False): moved the previous run's checkpoints "
                   f"{', '.join(sorted(p.name for p in old))} to {dest}")
    return dest


def _remove_partial_files(ckpt_dir: Path) -> None:
    """Delete the temporary files (``.<name>.pt.<random>.tmp``) of saves that a killed process never finished."""
    if not ckpt_dir.is_dir():
        return
    for partial in ckpt_dir.glob(".*.pt.*.tmp"):
        logger.info(f"removing {partial}, the unfinished save of an interrupted run")
        partial.unlink(missing_ok=True)


def _remove_stale_checkpoints(engine, ckpt_dir: Path, prefix: str) -> None:
    """Delete interval checkpoints older than the one just saved (left by an earlier, interrupted run), on rank 0.

    Runs after the save; a checkpoint of a higher step (an unreadable one skipped at resume) is left for the save
    of that step to replace."""
    if not is_main_process():
        return
    found = _interval_checkpoints(ckpt_dir, prefix)
    current = engine.state.epoch
    if not any(step == current for step, _ in found):
        return
    for step, stale in found:
        if step < current:
            stale.unlink(missing_ok=True)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> bool:
    """Initialise the default process group when launched by ``torchrun`` (NCCL with CUDA, else Gloo).

    Returns:
        whether a process group is active.
    """
    if dist.is_initialized():
        return True
    if _world_size() < 2:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    logger.info(f"process group: backend {backend}, rank {dist.get_rank()} of {dist.get_world_size()}")
    return True


def distributed_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def wrap_ddp(
    network: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """Wrap ``network`` (already on ``device``) in ``DistributedDataParallel``; unchanged without a process group.

    ``find_unused_parameters`` is needed by networks that keep weights they do not use in forward (e.g. UniverSeg's
    last support branch, kept so that the official state dict loads).
    """
    if not dist.is_initialized():
        return network
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def is_main_process() -> bool:
    """True on rank 0, and when not distributed."""
    return not dist.is_initialized() or dist.get_rank() == 0


def cleanup_distributed() -> None:
    """Destroy the default process group if one is active (the ``finalize`` step of training configs).

    The ranks first meet at a barrier: a rank that tears its gloo group down while another still talks to it
    can abort at exit ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
