"""Helpers for resumable and multi-process training, kept out of the JSON configs.

- :func:`latest_checkpoint` finds the newest interval checkpoint written by MONAI's ``CheckpointSaver`` so that
  ``train#handlers`` can resume an interrupted run (model, optimizer, scheduler and engine state);
- :func:`init_distributed`, :func:`distributed_device`, :func:`wrap_ddp` and :func:`is_main_process` let one
  ``multi_gpu_train.json`` run under ``torchrun`` on GPUs (NCCL) and on CPUs (Gloo) alike.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Events

__all__ = [
    "make_optimizer",
    "latest_checkpoint",
    "make_resumable",
    "init_distributed",
    "cleanup_distributed",
    "distributed_device",
    "wrap_ddp",
    "is_main_process",
]

logger = logging.getLogger(__name__)

_STEP = re.compile(r"[=_](\d+)\.pt$")


def make_optimizer(
    params, name: str = "sgd", lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.Optimizer:
    """The optimizer a config names with one flag: ``"sgd"`` (with ``momentum``) or ``"adamw"``.

    Raises:
        ValueError: for another name.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """Path of the interval checkpoint with the highest step in ``ckpt_dir`` (``<prefix>*=<step>.pt``), or ``None``."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.glob(f"{prefix}*.pt") if (m := _STEP.search(p.name))]
    if not found:
        return None
    step, path = max(found)
    logger.info(f"resuming from {path} (step {step})")
    return str(path)


def make_resumable(
    trainer, ckpt_dir: str | os.PathLike, objects: dict, resume: bool = True, save_interval: int = 1,
    prefix: str = "checkpoint",
) -> str | None:
    """Save ``trainer``'s full state every ``save_interval`` epochs and, with ``resume``, continue from the newest one.

    Attaches MONAI's ``CheckpointSaver`` (one interval checkpoint kept, ``<ckpt_dir>/<prefix>_checkpoint_epoch=N.pt``,
    holding ``objects`` — model, optimizer, scheduler — and the trainer's state) and, when such a checkpoint exists,
    a ``CheckpointLoader`` that restores it at ``Events.STARTED`` so an interrupted run continues at the epoch and
    iteration where it stopped. A config calls this from its ``run`` step rather than listing the two handlers in
    ``train#handlers``, because they refer to the trainer that owns those handlers.

    Returns:
        the checkpoint resumed from, or ``None``.
    """
    from monai.handlers import CheckpointLoader, CheckpointSaver

    save_dict = {**objects, "trainer": trainer}
    path = latest_checkpoint(ckpt_dir, prefix) if resume else None
    if path is not None:
        device = next(iter(objects["model"].parameters())).device if "model" in objects else "cpu"
        CheckpointLoader(load_path=path, load_dict=save_dict, map_location=device).attach(trainer)
    CheckpointSaver(
        save_dir=str(ckpt_dir), save_dict=save_dict, file_prefix=prefix, save_interval=save_interval, n_saved=1,
        epoch_level=True,
    ).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _remove_stale_checkpoints, Path(ckpt_dir), prefix)
    return path


def _remove_stale_checkpoints(engine, ckpt_dir: Path, prefix: str) -> None:
    """Delete interval checkpoints older than the newest (left by an earlier, interrupted run), on rank 0 only."""
    if not is_main_process():
        return
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.glob(f"{prefix}*.pt") if (m := _STEP.search(p.name)))
    for _, stale in found[:-1]:
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
