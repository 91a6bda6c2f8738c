"""Predictions appear complete or not at all: a run writes into a staging folder, moved into place when it completes.

Every bundle's ``configs/inference.json`` declares::

    "staged_output": {"_target_": "custom_components.engines.StagedOutputDir", "output_dir": "@output_dir"},
    ... {"_target_": "SaveImaged", "output_dir": "$@staged_output.path", ...}
    "run": ["$@staged_output.run(@evaluator)"]

so ``SaveImaged`` writes into a hidden folder beside ``output_dir``; when the evaluator has run over every input, the
files are moved into ``output_dir`` (a rename of the whole folder when ``output_dir`` does not exist yet). When any
input fails (bad voxels found by ``CheckImaged``, a reader error, an interrupted run), the staging folder is removed and
``output_dir`` is left as it was: no prediction of the earlier inputs is written.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["StagedOutputDir"]

logger = logging.getLogger(__name__)


class StagedOutputDir:
    """A staging folder for the predictions of one run, committed to ``output_dir`` only when the run completes.

    Args:
        output_dir: where the predictions belong; existing files there are kept, those of the same name replaced.

    Attributes:
        path: the staging folder (``<parent>/.<name>.partial-<pid>-<random>``, on the same file system as
            ``output_dir`` so that moving is a rename); created by the writer on its first file.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir).expanduser().absolute()
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = str(self.output_dir.parent / f".{self.output_dir.name}.partial-{tag}")
        # folders above the staging folder that the writer will create (removed again when nothing is committed)
        missing, parent = [], self.output_dir.parent
        while not parent.exists() and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        self._created_parents = missing
        self.done = False
        atexit.register(self.discard)

    def run(self, workflow):
        """Run ``workflow`` (an engine, or anything with ``run()``, or a callable); commit when it returns, discard the
        staging folder when it raises. Returns what it returned."""
        try:
            result = workflow.run() if hasattr(workflow, "run") else workflow()
        except BaseException:
            self.discard()
            raise
        self.commit()
        return result

    def commit(self) -> list[str]:
        """Move the staged files into ``output_dir``; returns their new paths."""
        if self.done:
            return []
        self.done = True
        staging = Path(self.path)
        if not staging.exists():
            self._remove_created_parents()
            return []
        if not self.output_dir.exists():
            os.replace(staging, self.output_dir)
            moved = [str(f) for f in sorted(self.output_dir.rglob("*")) if f.is_file()]
        else:
            moved = []
            for f in sorted(p for p in staging.rglob("*") if p.is_file()):
                dest = self.output_dir / f.relative_to(staging)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, dest)
                moved.append(str(dest))
            shutil.rmtree(staging, ignore_errors=True)
        logger.info(f"{len(moved)} prediction file(s) moved into {self.output_dir}")
        return moved

    def discard(self) -> None:
        """Remove the staging folder (and any folder created only for it); ``output_dir`` is not touched."""
        if self.done:
            return
        self.done = True
        if os.path.exists(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
            logger.info(f"run did not complete: no prediction written to {self.output_dir}")
        self._remove_created_parents()

    def _remove_created_parents(self) -> None:
        for folder in self._created_parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
