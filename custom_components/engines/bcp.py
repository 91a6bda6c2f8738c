"""BCP (bidirectional copy-paste) training engines: copy-paste pre-training and mean-teacher self-training.

:class:`BCPTrainer` is a :class:`~custom_components.engines.step.CustomStepTrainer` (MONAI's training step) whose
forward and loss implement one of the two stages of Bai et al. (CVPR 2023):

- ``stage="pretrain"``: the labeled batch is split into halves ``a``/``b``; the student is trained on
  ``mix(La, Lb)``, either with the masked two-region (CE + Dice)/2 loss of weights (1, 1) (``pretrain_loss="masked"``,
  official ACDC) or with the plain whole-image (CE + Dice)/2 against the mixed label ``mix(Ya, Yb)``
  (``pretrain_loss="mixed_label"``, official LA);
- ``stage="selftrain"``: the teacher predicts the unlabeled halves ``Ua``/``Ub`` (no gradient; in train mode by
  default, as the official code), pseudo labels are the argmax (or foreground probability >= threshold for binary
  tasks) cleaned to the largest connected component per class; the student sees ``X_in = mix(La, Ua)`` and
  ``X_out = mix(Ub, Lb)`` with weights (1, alpha) and (alpha, 1); after each iteration (its optimizer step) the
  teacher is updated by EMA (:class:`~custom_components.engines.ema.EMA`).

The labeled stream is the trainer's ``train_data_loader`` (one epoch = ``epoch_length`` labeled batches); the
unlabeled stream (``unlabeled_data_loader``) is iterated endlessly, as the official two-stream sampler.

The two-stage recipe in one run (the bundle's ``train.json``, ``stage`` = ``"all"`` | ``"pretrain"`` |
``"selftrain"``): :func:`stages_to_run` decides once, at the start, which stages run; :func:`run_pretrain` runs stage
1 (resumable) and, at its end, writes its final files atomically: ``optimizer.pt`` then ``model.pt``, the weights
selected on validation. ``model.pt`` is written last and only then, so its presence marks stage 1 as finished and a
later run does not redo it. :func:`run_selftrain` initialises student and teacher (and, as the official ACDC code, the
optimizer's momentum) from those files, unless it resumes its own checkpoint, and runs stage 2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from monai.inferers import SlidingWindowInferer
from monai.utils import CommonKeys as Keys

from ..transforms.copy_paste import BidirectionalCopyPaste
from .ema import EMA
from .step import CustomStepTrainer, KeysPrepareBatch
from .training import is_main_process, latest_checkpoint, make_resumable

__all__ = [
    "BCPTrainer",
    "pseudo_labels",
    "largest_component_per_class",
    "load_pretrained",
    "load_optimizer_momentum",
    "stages_to_run",
    "run_pretrain",
    "run_selftrain",
    "SoftmaxSlidingWindowInferer",
    "PRETRAIN_WEIGHTS",
    "PRETRAIN_OPTIMIZER",
    "PRETRAIN_BEST",
]

#: final files of stage 1 (written at its end; ``model.pt`` last, so that it marks the stage as finished) and the file
#: its validation writes while it runs (model and optimizer of the best validation Dice).
PRETRAIN_WEIGHTS, PRETRAIN_OPTIMIZER, PRETRAIN_BEST = "model.pt", "optimizer.pt", "best_model.pt"
STAGES = ("all", "pretrain", "selftrain")

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


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if hasattr(net, "module") and isinstance(net.module, nn.Module) else net


def _weights_of(state: dict) -> dict:
    """The model state dict of a checkpoint: a plain state dict, the official ``{"net", "opt"}`` dictionary or a
    ``{"model", ...}`` dictionary of MONAI's saver."""
    for key in ("net", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def load_optimizer_momentum(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load the per-parameter state (SGD momentum buffers, Adam moments) of an optimizer state dict into
    ``optimizer``, keeping ``optimizer``'s own hyperparameters (learning rate, momentum, weight decay, and the
    ``initial_lr`` of its scheduler): the official ACDC self-training loads the whole optimizer state of the
    pre-training checkpoint, whose hyperparameters are the same.

    Raises:
        ValueError: the state does not fit the optimizer (another network or optimizer type).
    """
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise ValueError(f"the pre-training optimizer state does not fit this optimizer: {e}") from e
    for group, hyper in zip(optimizer.param_groups, own):
        group.update(hyper)


def load_pretrained(
    path: str | os.PathLike | None, *networks: nn.Module, required: bool = True,
    resume_dir: str | os.PathLike | None = None, optimizer: torch.optim.Optimizer | None = None,
) -> str | None:
    """Load pre-trained weights (``models/pretrain/model.pt`` of stage 1) into each of ``networks``.

    Student and teacher start from the same pre-trained weights. An empty ``path`` does nothing (random
    initialisation), and so does a ``resume_dir`` holding an interval checkpoint: the resumed run restores its own
    state. The file is a plain state dict, the official ``{"net": ..., "opt": ...}`` checkpoint, or a
    ``{"model": ...}`` dictionary.

    Args:
        path: the weights.
        networks: the networks to initialise (student and teacher).
        required: a missing file raises (else a warning and random weights).
        resume_dir: stage 2's checkpoint folder: when it holds an interval checkpoint, nothing is loaded.
        optimizer: also load the optimizer's momentum (:func:`load_optimizer_momentum`) from the checkpoint's
            ``"opt"``/``"optimizer"`` entry, or else from ``optimizer.pt`` next to ``path`` (what stage 1 writes), as
            the official ACDC self-training does; a warning when there is none.

    Raises:
        FileNotFoundError: ``path`` is set, missing and ``required``.
    """
    if not path or (resume_dir is not None and latest_checkpoint(resume_dir) is not None):
        return None
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(
                f"pre-trained weights not found: {path} (run the pre-training first: configs/train.json with "
                "--stage pretrain, or the whole recipe with the default --stage all; or set --pretrained_ckpt)"
            )
        logger.warning(f"no pre-trained weights at {path}; starting from random weights")
        return None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    weights = _weights_of(state)
    for net in networks:
        if net is not None:
            _unwrap(net).load_state_dict(weights)
    logger.info(f"student and teacher initialised from {path}")
    if optimizer is not None:
        opt_state = next((state[k] for k in ("opt", "optimizer") if isinstance(state.get(k), dict)), None)
        source = str(path)
        if opt_state is None:
            sibling = Path(path).with_name(PRETRAIN_OPTIMIZER)
            if sibling.is_file():
                opt_state, source = torch.load(str(sibling), map_location="cpu", weights_only=True), str(sibling)
        if opt_state is None:
            logger.warning(f"no optimizer state with {path}: the optimizer starts without momentum")
        else:
            load_optimizer_momentum(optimizer, opt_state)
            logger.info(f"optimizer momentum initialised from {source}")
    return str(path)


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.normcase(os.path.abspath(str(a))) == os.path.normcase(os.path.abspath(str(b)))


def stages_to_run(
    stage: str, pretrain_dir: str | os.PathLike, pretrained_ckpt: str | os.PathLike | None, resume: bool = True
) -> list[str]:
    """The stages this run executes, decided once at its start (and logged).

    - ``"all"`` (the recipe): stage 1 when stage 2 starts from its weights (``pretrained_ckpt`` is
      ``<pretrain_dir>/model.pt``) and they are not there yet, then stage 2. A finished stage 1 is never redone here
      (delete its ``model.pt``, or run ``stage="pretrain"`` with ``resume=False``); with another ``pretrained_ckpt``
      (official weights, or empty for random weights) stage 1 is not needed and not run.
    - ``"pretrain"``: stage 1 alone; skipped when finished, unless ``resume`` is false (start over).
    - ``"selftrain"``: stage 2 alone (from ``pretrained_ckpt``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    weights = Path(pretrain_dir) / PRETRAIN_WEIGHTS
    finished = weights.is_file()
    if stage == "selftrain":
        plan = ["selftrain"]
    elif stage == "pretrain":
        plan = [] if finished and resume else ["pretrain"]
        if not plan:
            logger.info(f"stage 1 (pre-training) already finished: {weights} exists; nothing to do (resume=False "
                        "starts it over)")
    else:
        needed = bool(pretrained_ckpt) and _same_file(pretrained_ckpt, weights)
        plan = (["pretrain"] if needed and not finished else []) + ["selftrain"]
        if needed and finished:
            logger.info(f"stage 1 (pre-training) already finished: {weights} exists; not redone")
        elif not needed:
            logger.info(f"stage 2 starts from {pretrained_ckpt or 'random weights'}: stage 1 is not run")
    names = {"pretrain": "stage 1 (copy-paste pre-training)", "selftrain": "stage 2 (bidirectional self-training)"}
    logger.info(f"BCP stage={stage}: running {' then '.join(names[s] for s in plan) or 'nothing'}")
    return plan


def _check_batches(trainer, stage: str) -> None:
    """Raise when the labeled loader has no batch per process (ignite would otherwise fail later, obscurely)."""
    try:
        n = len(trainer.data_loader)
    except TypeError:  # an iterable without a length
        return
    if n == 0:
        raise ValueError(
            f"{stage}: the labeled data loader yields no batch: each process needs at least batch_size labeled items "
            "(2D: slices) per epoch, with drop_last; lower batch_size or raise labeled_repeats"
        )


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_pretrain(
    trainer, ckpt_dir: str | os.PathLike, objects: dict, resume: bool = True, select_on: str = "val",
    on_finished=None,
) -> str | None:
    """Run stage 1 (``trainer``; ``None`` when :func:`stages_to_run` left it out) and write its final files.

    The run is resumable (:func:`~custom_components.engines.training.make_resumable` with ``objects``: model and
    optimizer). At its end, on rank 0: the weights and optimizer state selected by ``select_on`` (``"val"``: those
    of the best validation Dice, saved by stage 1's validation in ``best_model.pt``; ``"last"``: the final ones) are
    written atomically to ``optimizer.pt`` and then ``model.pt``, which marks the stage as finished; then
    ``on_finished(path of model.pt)`` is called (rank 0; e.g. to record how the weights were trained).

    Returns:
        the path of the final weights, or ``None`` when the stage did not run.
    """
    if trainer is None:
        return None
    if select_on not in ("val", "last"):
        raise ValueError(f"select_on must be 'val' or 'last', got {select_on!r}")
    _check_batches(trainer, "stage 1")
    folder = Path(ckpt_dir)
    make_resumable(trainer, folder, objects, resume=resume)
    logger.info(f"stage 1 (copy-paste pre-training): {trainer.state.max_epochs} epochs, checkpoints in {folder}")
    trainer.run()
    final = folder / PRETRAIN_WEIGHTS
    if is_main_process():
        from ..data.synthetic.io import save_torch_atomically

        best = folder / PRETRAIN_BEST
        if select_on == "val" and best.is_file():
            state = torch.load(str(best), map_location="cpu", weights_only=True)
            weights, opt_state, source = state["model"], state.get("optimizer"), f"the best validation ({best})"
        else:
            if select_on == "val":
                logger.warning("stage 1 ran no validation: its final weights are the last ones")
            weights = _unwrap(objects["model"]).state_dict()
            opt_state = objects["optimizer"].state_dict() if "optimizer" in objects else None
            source = "the last iteration"
        if opt_state is not None:
            save_torch_atomically(opt_state, folder / PRETRAIN_OPTIMIZER)
        save_torch_atomically(weights, final)  # last: marks stage 1 as finished
        logger.info(f"stage 1 (copy-paste pre-training) finished: final weights {final}, from {source}")
        if on_finished is not None:
            on_finished(str(final))
    _barrier()
    return str(final)


def run_selftrain(
    trainer, ckpt_dir: str | os.PathLike, objects: dict, pretrained_ckpt: str | os.PathLike | None,
    network: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer | None = None,
    resume: bool = True,
) -> None:
    """Run stage 2 (``trainer``; ``None`` when :func:`stages_to_run` left it out): initialise student, teacher and
    (unless ``optimizer`` is ``None``) the optimizer's momentum from ``pretrained_ckpt`` (:func:`load_pretrained`;
    skipped when stage 2 resumes its own checkpoint), make it resumable and run it."""
    if trainer is None:
        return
    _check_batches(trainer, "stage 2")
    load_pretrained(pretrained_ckpt, network, teacher, resume_dir=ckpt_dir if resume else None, optimizer=optimizer)
    make_resumable(trainer, ckpt_dir, objects, resume=resume)
    logger.info(f"stage 2 (bidirectional self-training): {trainer.state.max_epochs} epochs, checkpoints in {ckpt_dir}")
    trainer.run()


class SoftmaxSlidingWindowInferer(SlidingWindowInferer):
    """Sliding-window inference that averages the windows' softmax probabilities (not their logits), with the
    window step given in voxels: the official LA/UA-MT test (``test_single_case``: stride 18/18/4 for a 112x112x80
    patch, the last window aligned with the image's end, constant weights, probabilities averaged). The output is
    the averaged class probabilities: post-processing takes the argmax (for two classes, foreground probability >
    0.5) with no softmax of its own.

    Args:
        roi_size: window size.
        stride: step between windows per spatial axis, in voxels (official LA: ``(18, 18, 4)``); ``None``: use
            ``overlap``.
        kwargs: those of :class:`~monai.inferers.SlidingWindowInferer` (``overlap`` is computed from ``stride``).
    """

    def __init__(self, roi_size: Sequence[int] | int, stride: Sequence[int] | int | None = None, **kwargs) -> None:
        if stride is not None:
            rois = [int(roi_size)] * (len(stride) if isinstance(stride, Sequence) else 1) \
                if not isinstance(roi_size, Sequence) else [int(r) for r in roi_size]
            strides = [int(stride)] * len(rois) if not isinstance(stride, Sequence) else [int(t) for t in stride]
            if len(strides) != len(rois) or any(t < 1 or t > r for t, r in zip(strides, rois)):
                raise ValueError(f"stride {stride} must give 1 <= step <= window per axis of roi_size {roi_size}")
            # MONAI's step is int(roi * (1 - overlap)): half a voxel of margin makes it exactly the stride
            kwargs["overlap"] = [max(0.0, 1.0 - (t + 0.5) / r) for t, r in zip(strides, rois)]
        super().__init__(roi_size, **kwargs)
        self.stride = stride

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        def probabilities(x, *a, **k):
            return torch.softmax(network(x, *a, **k).float(), dim=1)

        return super().__call__(inputs, probabilities, *args, **kwargs)


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


class BCPTrainer(CustomStepTrainer):
    """Trainer running BCP copy-paste pre-training or bidirectional self-training.

    Its forward (the mixes and the student's predictions) and loss run inside the shared MONAI-style training step of
    :class:`~custom_components.engines.step.CustomStepTrainer` (``prepare_batch``, AMP, gradient accumulation,
    ``BACKWARD_COMPLETED`` before the optimizer step, ``grad_clip``). Batches are split into halves ``a``/``b``, so the
    batch size must be even (at least 2).

    Args (in addition to those of :class:`~monai.engines.SupervisedTrainer`; ``loss_function`` is a
    :class:`~custom_components.losses.MaskedDiceCELoss`; ``prepare_batch`` defaults to
    :class:`~custom_components.engines.step.KeysPrepareBatch` of ``image_key``/``label_key`` and also reads the
    unlabeled batches, whose label it ignores):
        unlabeled_data_loader: the unlabeled stream (self-training only; iterated endlessly).
        teacher: the EMA teacher (self-training only).
        stage: ``"pretrain"`` or ``"selftrain"``.
        pretrain_loss: loss of stage 1: ``"masked"`` (official ACDC: the masked two-region (CE + Dice)/2 of the
            surround ``Ya`` and the box ``Yb``, weights 1 and 1) or ``"mixed_label"`` (official LA: the plain
            whole-image (CE + Dice)/2 against the mixed label ``mix(Ya, Yb)``, no region split). The Dice form is the
            loss function's (``dice_form``).
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
        pretrain_loss: str = "masked",
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
        if pretrain_loss not in ("masked", "mixed_label"):
            raise ValueError(f"pretrain_loss must be 'masked' or 'mixed_label', got {pretrain_loss!r}")
        if stage == "selftrain" and (teacher is None or unlabeled_data_loader is None):
            raise ValueError("self-training needs a teacher and an unlabeled_data_loader")
        kwargs.setdefault("prepare_batch", KeysPrepareBatch(image_key, label_key))
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=loss_function, **kwargs,
        )
        self.stage = stage
        self.pretrain_loss = pretrain_loss
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
        self._loss_terms: list[tuple] = []
        self.ema = None
        if stage == "selftrain":
            self.ema = EMA(teacher, network, decay=ema_decay, buffers=ema_buffers)
            self.ema.attach(self)

    # -- data -----------------------------------------------------------------------------------
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

    # -- one iteration (inside CustomStepTrainer's step) -------------------------------------------------------------
    def compute_pred(self, engine, inputs: torch.Tensor, targets: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        """The mixes of this stage and the student's predictions (``image``/``label``/``pred`` of the output: the
        mixed image, mixed label and prediction of ``X_in``, the pre-training mix in stage ``"pretrain"``)."""
        la, lb = self._halves(inputs)
        ya, yb = self._halves(targets)
        if self.stage == "pretrain":
            m = self.copy_paste.mask(la.shape[2:], la.device)
            x = la * m + lb * (1 - m)
            y = (ya * m + yb * (1 - m)).to(ya.dtype)
            pred = engine.inferer(x, engine.network)
            if self.pretrain_loss == "mixed_label":  # whole image against the mixed label: a mask of ones, no box term
                self._loss_terms = [(pred, y, y, torch.ones_like(m), 1.0, 0.0)]
            else:  # surround Ya and box Yb, each region's (CE + Dice)/2 with weight 1
                self._loss_terms = [(pred, ya, yb, m, 1.0, 1.0)]
            return {Keys.IMAGE: x, Keys.LABEL: y, Keys.PRED: pred}

        uimg = engine.prepare_batch(self._next_unlabeled(), engine.state.device, engine.non_blocking,
                                    **engine.to_kwargs)[0].to(inputs.device)
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
        self._loss_terms = [(pred_in, ya[:n], pa[:n], m, 1.0, alpha)]  # labeled surround, unlabeled box
        if self.bidirectional:
            pred_out = engine.inferer(mixed["image_out"], engine.network)
            self._loss_terms.append((pred_out, pb[:n], yb[:n], m, alpha, 1.0))  # unlabeled surround
        return {Keys.IMAGE: mixed["image_in"], Keys.LABEL: mixed["label_in"], Keys.PRED: pred_in}

    def compute_loss(self, engine, output: dict) -> torch.Tensor:
        """Sum of the masked (CE + Dice)/2 losses of the mixes of :meth:`compute_pred` (one, or ``X_in`` and
        ``X_out``)."""
        terms, self._loss_terms = self._loss_terms, []
        loss = engine.loss_function(*terms[0])
        for t in terms[1:]:
            loss = loss + engine.loss_function(*t)
        return loss
