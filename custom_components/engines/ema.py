"""Mean-teacher exponential moving average (EMA), shared by the semi-supervised bundles.

``teacher <- decay * teacher + (1 - decay) * student`` after every optimizer step, computed with
:func:`torch.optim.swa_utils.get_ema_multi_avg_fn` on a teacher kept as a plain copy of the network (so its state
dict has the network's own keys, unlike ``AveragedModel``). Use it as a callable
(``ema()`` after ``optimizer.step()``) or attach it to an ignite engine (``ema.attach(trainer)``: updates at every
``ITERATION_COMPLETED``). With ``buffers=True`` floating-point buffers (BatchNorm running mean/var) are averaged too
(the official BCP ACDC code averages the whole state dict); integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = ["EMA", "make_teacher"]


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, "module") and isinstance(net.module, nn.Module) else net


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` (unwrapped from DDP) whose parameters need no gradient."""
    teacher = copy.deepcopy(_unwrap(student))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class EMA:
    """Update ``teacher`` as the exponential moving average of ``student``.

    Args:
        teacher: the averaged network (never updated by gradient).
        student: the trained network (may be wrapped by ``DistributedDataParallel``).
        decay: EMA decay (BCP: 0.99).
        buffers: also average floating-point buffers (BN statistics); otherwise buffers are left unchanged.
        warmup: use ``min(decay, 1 - 1/(step + 1))`` (the classic mean-teacher ramp); BCP uses a constant decay.
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, decay: float = 0.99, buffers: bool = True, warmup: bool = False
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.teacher, self.student = teacher, student
        self.decay, self.buffers, self.warmup = float(decay), bool(buffers), bool(warmup)
        self.step = 0

    @torch.no_grad()
    def __call__(self, engine=None) -> None:
        decay = min(self.decay, 1.0 - 1.0 / (self.step + 1)) if self.warmup else self.decay
        average = get_ema_multi_avg_fn(decay)  # torch's EMA update (a foreach lerp towards the student)
        student = _unwrap(self.student)
        average(list(self.teacher.parameters()), [p.detach() for p in student.parameters()], self.step)
        if self.buffers:
            pairs = list(zip(self.teacher.buffers(), student.buffers()))
            floats = [(t, s) for t, s in pairs if t.dtype.is_floating_point]
            if floats:
                average([t for t, _ in floats], [s.detach() for _, s in floats], self.step)
            for t, s in pairs:
                if not t.dtype.is_floating_point:
                    t.copy_(s)
        self.step += 1

    def attach(self, engine) -> None:
        """Update after every iteration of an ignite ``engine`` (after its optimizer step)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
