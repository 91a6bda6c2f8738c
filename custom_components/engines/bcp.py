"""BCP (bidirectional copy-paste) training engines: copy-paste pre-training and mean-teacher self-training.

:class:`BCPTrainer` is a MONAI :class:`~monai.engines.SupervisedTrainer` whose iteration implements one of the two
stages of Bai et al. (CVPR 2023):

- ``stage="pretrain"``: the labeled batch is split into halves ``a``/``b``; the student is trained on
  ``mix(La, Lb)`` against ``mix(Ya, Yb)`` with the masked (CE + Dice)/2 loss, both weights 1;
- ``stage="selftrain"``: the teacher predicts the unlabeled halves ``Ua``/``Ub`` (no gradient; in train mode by
  default, as the official code), pseudo labels are the argmax (or foreground probability >= threshold for binary
  tasks) cleaned to the largest connected component per class; the student sees ``X_in = mix(La, Ua)`` and
  ``X_out = mix(Ub, Lb)`` with weights (1, alpha) and (alpha, 1); after each optimizer step the teacher is updated
  by EMA (:class:`~custom_components.engines.ema.EMA`).

The labeled stream is the trainer's ``train_data_loader`` (one epoch = ``epoch_length`` labeled batches); the
unlabeled stream (``unlabeled_data_loader``) is iterated endlessly, as the official two-stream sampler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from ..transforms.copy_paste import BidirectionalCopyPaste
from .training import latest_checkpoint
from .ema import EMA

__all__ = ["BCPTrainer", "pseudo_labels", "largest_component_per_class", "load_pretrained"]

logger = logging.getLogger(__name__)


def largest_component_per_class(labels: torch.Tensor, num_classes: int, connectivity: int | None = None) -> torch.Tensor:
    """Keep, per sample and per foreground class, only the largest connected component (MONAI's
    ``KeepLargestConnectedComponent``; removed voxels become background, a class with no voxel is left as is).

    Args:
        labels: integer label maps ``[B, 1, *spatial]`` (each sample is processed separately: per slice in 2D).
        num_classes: classes including background.
        connectivity: neighbourhood (``None``: full connectivity, i.e. the number of spatial dimensions).
    """
    from monai.transforms import KeepLargestConnectedComponent

    lcc = KeepLargestConnectedComponent(
        applied_labels=list(range(1, num_classes)), is_onehot=False, independent=True, connectivity=connectivity
    )
    out = []
    for sample in labels:
        kept = lcc(sample)
        kept = kept.as_tensor() if hasattr(kept, "as_tensor") else torch.as_tensor(kept)
        out.append(kept.to(device=labels.device, dtype=labels.dtype))
    return torch.stack(out)


@torch.no_grad()
def pseudo_labels(
    logits: torch.Tensor, threshold: float | None = None, lcc: bool = True, connectivity: int | None = None
) -> torch.Tensor:
    """Teacher logits ``[B, C, *spatial]`` to pseudo label maps ``[B, 1, *spatial]`` (long).

    Args:
        logits: teacher output.
        threshold: for binary tasks, foreground = softmax probability of class 1 ``>= threshold`` (LA: 0.5);
            ``None``: argmax over classes (ACDC).
        lcc: keep the largest connected component per class.
        connectivity: of the components (``None``: full).
    """
    probs = torch.softmax(logits.float(), dim=1)
    if threshold is not None:
        if probs.shape[1] != 2:
            raise ValueError(f"a threshold needs 2 classes, got {probs.shape[1]}")
        labels = (probs[:, 1:2] >= threshold).long()
    else:
        labels = probs.argmax(dim=1, keepdim=True)
    if lcc:
        labels = largest_component_per_class(labels, probs.shape[1], connectivity).long()
    return labels


def load_pretrained(
    path: str | os.PathLike | None, *networks: nn.Module, required: bool = True,
    resume_dir: str | os.PathLike | None = None,
) -> str | None:
    """Load a plain state dict (``models/model.pt`` of the pre-training stage) into each of ``networks``.

    Student and teacher start from the same pre-trained weights. An empty ``path`` does nothing (pre-training
    itself), and so does a ``resume_dir`` holding an interval checkpoint: the resumed run restores its own state.

    Raises:
        FileNotFoundError: ``path`` is set, missing and ``required``.
    """
    if not path or (resume_dir is not None and latest_checkpoint(resume_dir) is not None):
        return None
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(
                f"pre-trained weights not found: {path} (run the pre-training workflow first: configs/pretrain.json, "
                "or set --pretrained_ckpt)"
            )
        logger.warning(f"no pre-trained weights at {path}; starting from random weights")
        return None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for net in networks:
        target = net.module if hasattr(net, "module") else net
        target.load_state_dict(state)
    logger.info(f"student and teacher initialised from {path}")
    return str(path)


def _endless(loader: Iterable):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(
                "the unlabeled data loader yields no batch: each process needs at least one full batch of unlabeled "
                "images (fewer unlabeled items than batch_size x processes with drop_last)"
            )


class BCPTrainer(SupervisedTrainer):
    """SupervisedTrainer running BCP copy-paste pre-training or bidirectional self-training.

    Args (in addition to those of :class:`~monai.engines.SupervisedTrainer`; ``loss_function`` is a
    :class:`~custom_components.losses.MaskedDiceCELoss`):
        unlabeled_data_loader: the unlabeled stream (self-training only; iterated endlessly).
        teacher: the EMA teacher (self-training only).
        stage: ``"pretrain"`` or ``"selftrain"``.
        mask_ratio: box side / patch side (beta, 2/3).
        u_weight: weight alpha of pseudo-labelled regions (0.5).
        bidirectional: ``False`` trains on ``X_in`` only (ablation).
        lcc_pseudo: largest connected component on pseudo labels.
        threshold: foreground threshold of binary pseudo labels (LA: 0.5); ``None``: argmax.
        connectivity: of the pseudo-label components (``None``: full).
        teacher_train_mode: the teacher predicts in train mode (dropout, BN batch statistics) as the official code.
        ema_decay: EMA decay (0.99).
        ema_buffers: also average BN buffers (official ACDC: yes; LA: no).
        seed: seed of the box positions.
        copy_paste: ``False`` turns the mixing off (mask of ones: the student sees ``La`` with its labels and ``Ub``
            with pseudo labels of weight alpha), i.e. plain mean-teacher self-training from the same pipeline, the
            baseline the authors compare with.
        image_key, label_key: keys of the batches.
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        train_data_loader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: nn.Module,
        unlabeled_data_loader=None,
        teacher: nn.Module | None = None,
        stage: str = "selftrain",
        mask_ratio: float = 2.0 / 3.0,
        u_weight: float = 0.5,
        bidirectional: bool = True,
        lcc_pseudo: bool = True,
        threshold: float | None = None,
        connectivity: int | None = None,
        teacher_train_mode: bool = True,
        ema_decay: float = 0.99,
        ema_buffers: bool = True,
        seed: int | None = None,
        copy_paste: bool = True,
        image_key: str = Keys.IMAGE,
        label_key: str = Keys.LABEL,
        **kwargs,
    ) -> None:
        if stage not in ("pretrain", "selftrain"):
            raise ValueError(f"stage must be 'pretrain' or 'selftrain', got {stage!r}")
        if stage == "selftrain" and (teacher is None or unlabeled_data_loader is None):
            raise ValueError("self-training needs a teacher and an unlabeled_data_loader")
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=loss_function, **kwargs,
        )
        self.stage = stage
        self.unlabeled_data_loader = unlabeled_data_loader
        self._unlabeled_iter = None
        self.teacher = teacher
        self.copy_paste = BidirectionalCopyPaste(mask_ratio, seed)
        self.use_copy_paste = bool(copy_paste)
        self.u_weight = float(u_weight)
        self.bidirectional = bool(bidirectional)
        self.lcc_pseudo, self.threshold, self.connectivity = bool(lcc_pseudo), threshold, connectivity
        self.teacher_train_mode = bool(teacher_train_mode)
        self.image_key, self.label_key = image_key, label_key
        self.ema = None
        if stage == "selftrain":
            self.ema = EMA(teacher, network, decay=ema_decay, buffers=ema_buffers)
            self.ema.attach(self)

    # -- data -----------------------------------------------------------------------------------
    def _to(self, batch: dict, key: str) -> torch.Tensor:
        return torch.as_tensor(batch[key]).to(self.state.device if hasattr(self.state, "device") else self.device)

    def _next_unlabeled(self) -> dict:
        if self._unlabeled_iter is None:
            self._unlabeled_iter = _endless(self.unlabeled_data_loader)
        return next(self._unlabeled_iter)

    @staticmethod
    def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0] // 2
        if n < 1:
            raise ValueError(f"BCP splits each batch into two halves: batch size must be >= 2, got {x.shape[0]}")
        return x[:n], x[n : 2 * n]

    # -- one iteration ----------------------------------------------------------------------------
    def _compute(self, engine, img: torch.Tensor, lab: torch.Tensor) -> dict:
        la, lb = self._halves(img)
        ya, yb = self._halves(lab)
        if self.stage == "pretrain":
            m = self.copy_paste.mask(la.shape[2:], la.device)
            x = la * m + lb * (1 - m)
            y = (ya * m + yb * (1 - m)).to(ya.dtype)
            pred = engine.inferer(x, engine.network)
            loss = engine.loss_function(pred, ya, yb, m, 1.0, 1.0)
            return {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: pred, Keys.LOSS: loss}

        unl = self._next_unlabeled()
        uimg = torch.as_tensor(unl[self.image_key]).to(img.device)
        ua, ub = self._halves(uimg)
        self.teacher.train(self.teacher_train_mode)
        with torch.no_grad():
            pa = pseudo_labels(self.teacher(ua), self.threshold, self.lcc_pseudo, self.connectivity).to(ya.dtype)
            pb = pseudo_labels(self.teacher(ub), self.threshold, self.lcc_pseudo, self.connectivity).to(yb.dtype)
        n = min(la.shape[0], ua.shape[0])
        if self.use_copy_paste:
            mixed = self.copy_paste(la[:n], lb[:n], ua[:n], ub[:n], ya[:n], yb[:n], pa[:n], pb[:n])
        else:  # no box: X_in = La (labels), X_out = Ub (pseudo labels)
            mixed = {"mask": torch.ones(la.shape[2:], device=la.device), "image_in": la[:n], "image_out": ub[:n],
                     "label_in": ya[:n], "label_out": pb[:n]}
        m, alpha = mixed["mask"], self.u_weight
        pred_in = engine.inferer(mixed["image_in"], engine.network)
        loss = engine.loss_function(pred_in, ya[:n], pa[:n], m, 1.0, alpha)  # labeled surround, unlabeled box
        if self.bidirectional:
            pred_out = engine.inferer(mixed["image_out"], engine.network)
            loss = loss + engine.loss_function(pred_out, pb[:n], yb[:n], m, alpha, 1.0)  # unlabeled surround
        return {Keys.IMAGE: mixed["image_in"], Keys.LABEL: mixed["label_in"], Keys.PRED: pred_in, Keys.LOSS: loss}

    def _iteration(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        img = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device)
        lab = torch.as_tensor(batchdata[self.label_key]).to(engine.state.device)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                out = self._compute(engine, img, lab)
            engine.state.output = out
            engine.scaler.scale(out[Keys.LOSS]).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            out = self._compute(engine, img, lab)
            engine.state.output = out
            out[Keys.LOSS].backward()
            engine.optimizer.step()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        out[Keys.PRED] = out[Keys.PRED].detach()
        out[Keys.LOSS] = out[Keys.LOSS].detach()
        engine.state.output = out
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # decollation and postprocessing run on this event
        return engine.state.output
