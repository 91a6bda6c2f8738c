"""One training step for the project's custom trainers: :class:`CustomStepTrainer`.

MONAI's :class:`~monai.engines.SupervisedTrainer` runs ``loss_function(inferer(image, network), label)``; the
project's methods need more in the same step (BCP's copy-paste mixes and teacher pseudo labels, LViT's unlabeled
batches and EPI store, VoCo's student/EMA-teacher crops). :class:`CustomStepTrainer` keeps everything around the
forward pass the way MONAI 1.6 does it and lets a subclass supply only the forward and the loss:

1. ``prepare_batch(batch, device, non_blocking, **to_kwargs)`` -> ``(inputs, targets)`` or
   ``(inputs, targets, args, kwargs)``; with ``compile=True`` MetaTensor inputs/targets become plain tensors and get
   their meta back afterwards;
2. gradient accumulation as MONAI (``accumulation_steps``: zero-grad on the first micro-batch of a cycle, step on its
   last, a flush at the end of each epoch when ``epoch_length`` is not a multiple), ``network.train()``,
   ``optimizer.zero_grad(set_to_none=optim_set_to_none)``;
3. with ``amp`` (and the scaler MONAI's ``Trainer.run`` creates): ``torch.autocast(<type of the engine's device>,
   **amp_kwargs)`` around the forward and the loss (MONAI itself always autocasts ``"cuda"``, which does nothing for
   CPU tensors; here a CPU engine autocasts ``"cpu"``, bfloat16 by default);
4. :meth:`CustomStepTrainer.compute_pred` (subclass) -> ``FORWARD_COMPLETED`` -> :meth:`CustomStepTrainer.compute_loss`
   (subclass) -> ``LOSS_COMPLETED`` -> ``backward`` of ``loss / accumulation_steps`` (scaled by the GradScaler with
   AMP) -> ``BACKWARD_COMPLETED`` -> (on a step iteration) optional gradient clipping (unscaled first with AMP) and
   the optimizer step (``scaler.step`` + ``scaler.update`` with AMP) -> every tensor of the output detached ->
   ``MODEL_COMPLETED`` (where MONAI decollates, post-processes and updates metrics).

The engine output is the dictionary ``compute_pred`` returns, with ``loss`` (the unscaled loss) and whatever
``compute_loss`` added.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

__all__ = ["CustomStepTrainer", "KeysPrepareBatch"]


class KeysPrepareBatch:
    """``prepare_batch`` returning ``(batch[image_key], batch[label_key])`` moved to the device (``None`` for a
    missing or non-array label), for trainers whose batches use other keys than MONAI's ``image``/``label``.

    Args:
        image_key: key of the network input.
        label_key: key of the target (VoCo: ``"position"``, the position labels).
    """

    def __init__(self, image_key: str = Keys.IMAGE, label_key: str = Keys.LABEL) -> None:
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        def to(x):
            if not isinstance(x, (torch.Tensor, np.ndarray)):
                return None
            return torch.as_tensor(x).to(device=device, non_blocking=non_blocking, **kwargs)

        return to(batchdata[self.image_key]), to(batchdata.get(self.label_key))


def _plain(x: Any) -> tuple[Any, tuple | None]:
    """MetaTensor -> (plain tensor, (meta, applied_operations)); anything else unchanged."""
    if isinstance(x, MetaTensor):
        return x.as_tensor(), (x.meta, x.applied_operations)
    return x, None


def _with_meta(x: Any, meta: tuple | None) -> Any:
    if meta is None or not isinstance(x, torch.Tensor):
        return x
    return MetaTensor(x, meta=meta[0], applied_operations=meta[1])


class CustomStepTrainer(SupervisedTrainer):
    """A :class:`~monai.engines.SupervisedTrainer` whose iteration runs a subclass's forward and loss inside MONAI's
    training step (batch preparation, zero-grad, gradient accumulation, AMP, events, optimizer step; see the module
    docstring for the exact order).

    Subclasses implement :meth:`compute_pred` and :meth:`compute_loss`; the defaults are MONAI's own
    (``inferer(inputs, network, *args, **kwargs)`` and ``loss_function(pred, targets).mean()``), so the base class
    alone behaves as ``SupervisedTrainer`` with the device-typed autocast and gradient clipping added.

    Args:
        grad_clip: clip the L2 norm of all gradients of ``network`` to this value before each optimizer step
            (``torch.nn.utils.clip_grad_norm_``; with AMP the gradients are unscaled first). ``None``/0: no clipping.
        args, kwargs: those of :class:`~monai.engines.SupervisedTrainer` (``iteration_update`` must not be given: the
            step is this class's).
    """

    def __init__(self, *args, grad_clip: float | None = None, **kwargs) -> None:
        if kwargs.get("iteration_update") is not None:
            raise ValueError(f"{type(self).__name__} runs its own iteration; do not pass iteration_update")
        super().__init__(*args, **kwargs)
        self.grad_clip = float(grad_clip) if grad_clip else None

    # -- what subclasses supply ------------------------------------------------------------------------------------
    def compute_pred(self, engine, inputs: torch.Tensor, targets: Any, args: tuple, kwargs: dict) -> dict:
        """Forward pass of one iteration (runs under autocast with AMP).

        Args:
            engine: this trainer.
            inputs, targets, args, kwargs: from ``prepare_batch`` (``args``/``kwargs`` empty for a 2-tuple).

        Returns:
            the engine output so far: usually ``image``, ``label`` and ``pred`` (what MODEL_COMPLETED handlers,
            post-processing and metrics read), plus extras. State needed only by :meth:`compute_loss` may be kept on
            ``self``.
        """
        return {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: engine.inferer(inputs, engine.network, *args,
                                                                                   **kwargs)}

    def compute_loss(self, engine, output: dict) -> torch.Tensor:
        """Loss of one iteration (runs under autocast with AMP), from ``output`` (the dictionary of
        :meth:`compute_pred`, also ``engine.state.output``). Extra logged values may be written into ``output``.

        Returns:
            the scalar loss to back-propagate (stored, detached, as ``output["loss"]``).
        """
        return engine.loss_function(output[Keys.PRED], output[Keys.LABEL]).mean()

    # -- the step --------------------------------------------------------------------------------------------------
    def _accumulation(self, engine) -> tuple[bool, bool]:
        """``(zero the gradients first, step the optimizer after)`` for the current iteration."""
        acc = engine.accumulation_steps
        if acc <= 1:
            return True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is None:
            i = engine.state.iteration - 1
            return i % acc == 0, (i + 1) % acc == 0
        i = (engine.state.iteration - 1) % epoch_length
        return i % acc == 0, (i + 1) % acc == 0 or (i + 1) == epoch_length

    def _iteration(self, engine, batchdata: dict) -> dict:
        """One training iteration (see the module docstring); returns ``engine.state.output``.

        Raises:
            ValueError: when ``batchdata`` is None.
        """
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args, kwargs = (), {}
        else:
            inputs, targets, args, kwargs = batch
        inputs_meta = targets_meta = None
        if self.compile:  # torch.compile and MetaTensor do not mix (pytorch/pytorch#117026): plain tensors inside
            if isinstance(inputs, MetaTensor):
                warnings.warn("MetaTensor inputs are converted to torch.Tensor with compile, their meta restored after")
            inputs, inputs_meta = _plain(inputs)
            targets, targets_meta = _plain(targets)

        zero_grad, step = self._accumulation(engine)
        acc = engine.accumulation_steps
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        if zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_amp = engine.amp and engine.scaler is not None
        device_type = torch.device(engine.state.device).type
        with torch.autocast(device_type, **engine.amp_kwargs) if use_amp else contextlib.nullcontext():
            engine.state.output = self.compute_pred(engine, inputs, targets, args, kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = self.compute_loss(engine, engine.state.output)
            engine.state.output[Keys.LOSS] = loss
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        scaled = loss / acc if acc > 1 else loss
        (engine.scaler.scale(scaled) if use_amp else scaled).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if step:
            if self.grad_clip:
                if use_amp:
                    engine.scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.grad_clip)
            if use_amp:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()

        out = engine.state.output
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.requires_grad:
                out[k] = v.detach()
        if self.compile:
            for key, meta in ((Keys.IMAGE, inputs_meta), (Keys.PRED, inputs_meta), (Keys.LABEL, targets_meta)):
                if key in out:
                    out[key] = _with_meta(out[key], meta)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

