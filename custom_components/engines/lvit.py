"""LViT training engines: text batches, the EPI pseudo-label store and the semi-supervised trainer.

Li et al., "LViT: Language meets Vision Transformer in Medical Image Segmentation", IEEE TMI 2023 (arXiv 2206.14718).
The semi-supervised half of LViT was never released; the mechanics here are this project's design choices (see the
bundle's model card):

- :class:`TextPrepareBatch`: the ``prepare_batch`` of MONAI trainers/evaluators that passes the text token vectors
  (``text_emb``) as the network's second argument (``None`` when the batch has none: the no-text mode);
- :class:`EPIStore`: Exponential Pseudo-label Iteration. One soft pseudo label ``P`` per unlabeled image (keyed by
  its ``uid``), initialised from the network's prediction, updated as ``P <- beta * P + (1 - beta) * prediction``
  each time the image is trained on (once per pass over the unlabeled set); targets are ``P >= 0.5`` (or ``P`` with
  ``soft=True``). It has ``state_dict``/``load_state_dict``, so it is saved with the training checkpoint and a
  resumed run continues from the stored labels;
- :class:`LViTSemiTrainer`: a :class:`~custom_components.engines.step.CustomStepTrainer` (MONAI's training step around
  its own forward and loss) whose first ``labeled_epochs`` epochs train
  on labeled batches only (stage 1); at the start of the next epoch it predicts the soft pseudo labels of every
  unlabeled image (stage 2, skipped when a resumed checkpoint brought them); from then on each iteration adds an
  unlabeled batch (stage 3): ``loss = L_sup + u_weight * (L_sup(pred_u, EPI target) + lv_weight * L_LV)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Events
from monai.utils import CommonKeys as Keys

from .step import CustomStepTrainer

__all__ = ["TextPrepareBatch", "EPIStore", "LViTSemiTrainer", "attach_early_stopping"]

logger = logging.getLogger(__name__)


class TextPrepareBatch:
    """``prepare_batch`` for LViT: ``(image, label or None, (text or None,), {})`` from a batch dict.

    Args:
        text_key: key of the ``[B, text_len, D]`` token vectors (``None`` is passed when the batch has none).
    """

    def __init__(self, text_key: str = "text_emb", image_key: str = Keys.IMAGE, label_key: str = Keys.LABEL) -> None:
        self.text_key, self.image_key, self.label_key = text_key, image_key, label_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        def to(x):  # tensors only: an unloaded entry (a label path in an inference datalist) is passed as None
            if not isinstance(x, (torch.Tensor, np.ndarray)):
                return None
            return torch.as_tensor(x).to(device=device, non_blocking=non_blocking)

        image = to(batchdata[self.image_key])
        label = to(batchdata.get(self.label_key))
        text = batchdata.get(self.text_key)
        text = to(text).float() if text is not None else None
        return image, label, (text,), {}


class EPIStore:
    """Per-image pseudo labels updated by exponential moving average (EPI).

    Args:
        beta: EMA factor (0.99).
        soft: targets are the soft ``P`` instead of ``P >= threshold``.
        threshold: of hard targets.
        dtype: storage type (``float16`` halves the memory of a large unlabeled set).
    """

    def __init__(self, beta: float = 0.99, soft: bool = False, threshold: float = 0.5, dtype=torch.float16) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta, self.soft, self.threshold = float(beta), bool(soft), float(threshold)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.labels: dict[str, torch.Tensor] = {}
        self.updates: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, uid: str) -> bool:
        return uid in self.labels

    def initialise(self, uids: Sequence[str], probs: torch.Tensor) -> None:
        """Set ``P`` of each image to ``probs`` (``[B, 1, H, W]`` probabilities): stage 2 of the recipe."""
        for uid, p in zip(uids, probs.detach()):
            self.labels[str(uid)] = p.to("cpu", self.dtype).clone()
            self.updates[str(uid)] = 0

    def update(self, uids: Sequence[str], probs: torch.Tensor) -> None:
        """``P <- beta * P + (1 - beta) * probs`` for each image (images not yet stored are initialised)."""
        for uid, p in zip(uids, probs.detach()):
            uid = str(uid)
            p = p.to("cpu", torch.float32)
            if uid not in self.labels:
                self.initialise([uid], p[None])
                continue
            new = self.beta * self.labels[uid].float() + (1.0 - self.beta) * p
            self.labels[uid] = new.to(self.dtype)
            self.updates[uid] += 1

    def probabilities(self, uids: Sequence[str]) -> torch.Tensor:
        """Stored ``P`` ``[B, 1, H, W]`` (float32)."""
        missing = [u for u in uids if str(u) not in self.labels]
        if missing:
            raise KeyError(f"no pseudo label stored for {missing[:3]}")
        return torch.stack([self.labels[str(u)].float() for u in uids])

    def targets(self, uids: Sequence[str]) -> torch.Tensor:
        """Training targets: ``P >= threshold`` (float) or the soft ``P``."""
        p = self.probabilities(uids)
        return p if self.soft else (p >= self.threshold).float()

    def state_dict(self) -> dict:
        uids = sorted(self.labels)
        return {
            "beta": self.beta,
            "uids": uids,
            "labels": torch.stack([self.labels[u] for u in uids]) if uids else torch.zeros(0),
            "updates": torch.tensor([self.updates.get(u, 0) for u in uids], dtype=torch.long),
        }

    def load_state_dict(self, state: dict) -> None:
        uids = list(state.get("uids", []))
        labels, updates = state.get("labels"), state.get("updates")
        self.labels = {u: labels[i].to(self.dtype).clone() for i, u in enumerate(uids)}
        self.updates = {u: int(updates[i]) for i, u in enumerate(uids)} if updates is not None else dict.fromkeys(uids, 0)


def _endless(loader: Iterable):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the unlabeled data loader yields no batch (fewer unlabeled items than the batch size?)")


class LViTSemiTrainer(CustomStepTrainer):
    """Semi-supervised LViT trainer (labeled stage, pseudo-label initialisation, EPI + LV-loss stage).

    Args (in addition to those of :class:`~monai.engines.SupervisedTrainer`; ``prepare_batch`` defaults to
    :class:`TextPrepareBatch`; ``loss_function`` is the supervised loss, e.g.
    :class:`~custom_components.losses.lvit.BalancedBCEDiceLoss`):
        unlabeled_data_loader: unlabeled batches (``image``, ``text_emb``, ``text_sentence``, ``uid``); no random
            spatial augmentation, so that a stored pseudo label stays aligned with its image.
        epi_store: the :class:`EPIStore`.
        labeled_epochs: epochs of stage 1 (labeled only). ``0`` starts with pseudo labels of the initial network.
        lv_loss: an :class:`~custom_components.losses.lvit.LVLoss` (``None`` or ``lv_weight=0``: no LV loss).
        lv_weight: weight of the LV loss (0.1).
        u_weight: weight of the unlabeled loss.
        sentence_key, uid_key: keys of the unlabeled batches.
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        train_data_loader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: nn.Module,
        unlabeled_data_loader,
        epi_store: EPIStore,
        labeled_epochs: int = 0,
        lv_loss: nn.Module | None = None,
        lv_weight: float = 0.1,
        u_weight: float = 1.0,
        sentence_key: str = "text_sentence",
        uid_key: str = "uid",
        **kwargs,
    ) -> None:
        kwargs.setdefault("prepare_batch", TextPrepareBatch())
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function, **kwargs)
        self.unlabeled_data_loader, self.epi_store = unlabeled_data_loader, epi_store
        self.labeled_epochs = int(labeled_epochs)
        self.lv_loss, self.lv_weight, self.u_weight = lv_loss, float(lv_weight), float(u_weight)
        self.sentence_key, self.uid_key = sentence_key, uid_key
        self._unlabeled_iter = None
        self._unlabeled: tuple | None = None  # (unlabeled batch, its predictions) from compute_pred to compute_loss
        self.add_event_handler(Events.EPOCH_STARTED, self._maybe_initialise_pseudo_labels)

    def semi_stage(self, epoch: int | None = None) -> bool:
        """Whether ``epoch`` (default: the current one, counted from 1) trains on unlabeled images too."""
        return (self.state.epoch if epoch is None else epoch) > self.labeled_epochs

    @torch.no_grad()
    def predict_pseudo_labels(self) -> int:
        """Stage 2: soft pseudo labels (sigmoid of the network) of every unlabeled image into the store."""
        net = self.network
        was_training = net.training
        net.eval()
        n = 0
        for batch in self.unlabeled_data_loader:
            image, _, args, _ = self.prepare_batch(batch, self.state.device, self.non_blocking)
            self.epi_store.initialise(list(batch[self.uid_key]), torch.sigmoid(self.inferer(image, net, *args).float()))
            n += image.shape[0]
        net.train(was_training)
        logger.info(f"EPI: initial pseudo labels of {n} unlabeled images predicted (epoch {self.state.epoch})")
        return n

    def _maybe_initialise_pseudo_labels(self, engine=None) -> None:
        if self.semi_stage() and len(self.epi_store) == 0:
            self.predict_pseudo_labels()

    def _next_unlabeled(self) -> dict:
        if self._unlabeled_iter is None:
            self._unlabeled_iter = _endless(self.unlabeled_data_loader)
        return next(self._unlabeled_iter)

    # -- one iteration (inside CustomStepTrainer's step) -------------------------------------------------------------
    def compute_pred(self, engine, inputs: torch.Tensor, targets: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        """Stage 1: the labeled prediction. Stage 3: one forward pass over the labeled and the next unlabeled batch
        (one DDP forward per backward; BatchNorm sees both); ``pred`` of the output is the labeled part."""
        self._unlabeled = None
        if not self.semi_stage():
            pred = engine.inferer(inputs, engine.network, *args)
            return {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: pred}
        unl = self._next_unlabeled()
        uimg, _, uargs, _ = engine.prepare_batch(unl, engine.state.device, engine.non_blocking)
        n = inputs.shape[0]
        both = torch.cat([inputs, uimg.to(inputs.dtype)])
        text = None if args[0] is None or uargs[0] is None else torch.cat([args[0], uargs[0]])
        pred_all = engine.inferer(both, engine.network, text)
        self._unlabeled = (unl, pred_all[n:])
        return {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: pred_all[:n]}

    def compute_loss(self, engine, output: dict) -> torch.Tensor:
        """``L_sup`` (stage 1), or ``L_sup + u_weight * (L_sup(pred_u, EPI target) + lv_weight * L_LV)`` (stage 3,
        also logged as ``supervised_loss``, ``unlabeled_loss``, ``lv_loss``); the EPI store is then updated with the
        unlabeled predictions."""
        pred, label = output[Keys.PRED], output[Keys.LABEL]
        loss_l = engine.loss_function(pred, label)
        if self._unlabeled is None:
            return loss_l
        (unl, upred), self._unlabeled = self._unlabeled, None
        uids = [str(u) for u in unl[self.uid_key]]
        if not all(u in self.epi_store for u in uids):  # e.g. another rank's images after a resume
            self.epi_store.initialise([u for u in uids if u not in self.epi_store],
                                      torch.sigmoid(upred.detach().float())[[u not in self.epi_store for u in uids]])
        target = self.epi_store.targets(uids).to(upred.device)
        loss_u = engine.loss_function(upred, target)
        output["supervised_loss"] = loss_l.detach()
        if self.lv_loss is not None and self.lv_weight > 0:
            sentences = torch.as_tensor(unl[self.sentence_key]).to(upred.device)
            lv = self.lv_loss(upred, sentences)
            output["lv_loss"] = lv.detach()
            loss_u = loss_u + self.lv_weight * lv
        output["unlabeled_loss"] = loss_u.detach()
        self.epi_store.update(uids, torch.sigmoid(upred.detach().float()))
        return loss_l + self.u_weight * loss_u


def attach_early_stopping(evaluator, trainer, patience: int, metric: str = "val_mean_dice") -> None:
    """Stop ``trainer`` when ``evaluator``'s ``metric`` has not improved for ``patience`` evaluations (official LViT:
    50 epochs). Called from a config's ``run`` list (the handler refers to both engines); ``patience <= 0``: off."""
    if patience is None or int(patience) <= 0:
        return
    from monai.handlers import EarlyStopHandler

    EarlyStopHandler(patience=int(patience), score_function=lambda e: e.state.metrics[metric], trainer=trainer,
                     epoch_level=True).attach(evaluator)
