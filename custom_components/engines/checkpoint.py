"""Checkpoint saving that survives a crash.

MONAI's ``CheckpointSaver`` writes through ignite's ``DiskSaver(atomic=False)``, and ignite's ``Checkpoint`` removes
the file it replaces *before* writing the new one: a process killed during a save (``kill -9``, out of memory, a
lost node) is left with a truncated file and without the previous one. :class:`AtomicCheckpointSaver` is MONAI's
saver (same arguments, same file names and contents: ``checkpoint_checkpoint_epoch=N.pt``, ``model.pt``) whose
files are written by :class:`AtomicDiskSaver`:

- each file is written to a temporary sibling (``.<name>.<random>.tmp``), flushed to the disk and renamed onto its
  name (:func:`custom_components.data.synthetic.io.atomic_write`), so a file of the final name is always complete;
- a file the new one replaces (the previous interval checkpoint) is removed only after the new one is in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import ignite.distributed as idist
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from ..data.synthetic.io import save_torch_atomically

__all__ = ["AtomicDiskSaver", "AtomicCheckpointSaver"]


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` that writes whole files or nothing, and removes a replaced file only after the new one.

    Args:
        dirname: folder of the files (created if missing; files already there are allowed).
        filename: a fixed file name used for every save (e.g. ``"model.pt"``), or ``None`` for the name ignite's
            ``Checkpoint`` gives (``<prefix>_checkpoint_epoch=N.pt``).
        save_on_rank: the rank that writes (the others do nothing).
        kwargs: passed to ``torch.save``.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0, **kwargs):
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank,
                         **kwargs)
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        save_torch_atomically(checkpoint, self.dirname / name, **self.kwargs)
        to_remove, self._to_remove = self._to_remove, []
        for old in to_remove:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        """Mark ``filename`` for removal after the next save has completed (ignite calls this before saving)."""
        name = self.filename or filename
        if idist.get_rank() == self.save_on_rank and name not in self._to_remove:
            self._to_remove.append(name)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, files and contents) writing through :class:`AtomicDiskSaver`.

    Interval checkpoints, the best-metric file (``key_metric_filename``, e.g. ``model.pt``) and the final file
    (``final_filename``) are each either the previous complete file or the new complete one, whenever the process
    stops; a replaced interval checkpoint is deleted only once its successor is complete.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        # MONAI builds one ignite Checkpoint per kind of save, each with its own DiskSaver(atomic=False) that knows
        # the fixed file name (or None); a MONAI version without these attributes fails here rather than saving
        # unsafely.
        for kind in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, kind)
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=fixed)
