"""Engine pieces for in-context segmentation with a three-input network (query, support images, support labels).

- :class:`PrepareEpisodeBatch`: the ``prepare_batch`` of MONAI trainers/evaluators for batches of
  :class:`~custom_components.data.fewshot.EpisodicDataset`: the network is called as
  ``network(image, support_images, support_labels)``.
- :func:`predict_episode`: probabilities of a query from ``K`` support sets (the mean of the sigmoid
  probabilities over the sets: the paper's support-set ensembling).
- :class:`FewShotInferer`: the inferer of ``inference.json``: for each target image (2D, or 3D slice by slice
  along an axis), for each label of a support folder, ensembled probabilities at the target's own size.
- :class:`CombineLabelsd`: per-label probabilities to one label map (binary for one label, multi-class for several).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform

__all__ = ["PrepareEpisodeBatch", "predict_episode", "FewShotInferer", "CombineLabelsd"]

logger = logging.getLogger(__name__)


class PrepareEpisodeBatch:
    """``(image, label, (support_images, support_labels), {})`` on ``device`` from an episode batch."""

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        def to(x):
            return torch.as_tensor(x).to(device=device, non_blocking=non_blocking, **kwargs)

        label = batchdata.get("label")
        return (
            to(batchdata["image"]),
            to(label) if label is not None else None,
            (to(batchdata["support_images"]), to(batchdata["support_labels"])),
            {},
        )


def predict_episode(
    network: torch.nn.Module,
    query: torch.Tensor,
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    support_size: int,
    num_ensemble: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Ensembled foreground probability of queries given a labeled pool of one task.

    For each of ``num_ensemble`` members a support set of ``min(support_size, N)`` distinct pool items is drawn
    (the same set for every query), and the sigmoid probabilities are averaged over the members.

    Args:
        network: the model, called as ``network(query, support_images, support_labels)``.
        query: ``(Q, 1, H, W)`` queries.
        pool_images, pool_labels: ``(N, 1, H, W)`` the labeled pool.
        support_size: ``S``.
        num_ensemble: ``K``.
        generator: random source of the support draws.
        batch_size: queries per forward pass.

    Returns:
        ``(Q, 1, H, W)`` probabilities.
    """
    n = pool_images.shape[0]
    s = min(int(support_size), n)
    probs = torch.zeros_like(query, dtype=torch.float32)
    for _ in range(int(num_ensemble)):
        idx = torch.randperm(n, generator=generator)[:s].to(pool_images.device)
        si, sl = pool_images[idx][None], pool_labels[idx][None]
        for start in range(0, query.shape[0], batch_size):
            q = query[start : start + batch_size]
            b = q.shape[0]
            logits = network(q, si.expand(b, *si.shape[1:]), sl.expand(b, *sl.shape[1:]))
            probs[start : start + b] += torch.sigmoid(logits.float())
    return probs / float(num_ensemble)


def _minmax_slices(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return (x - lo.view(-1, 1, 1, 1)) / scale.view(-1, 1, 1, 1) * (hi > lo).view(-1, 1, 1, 1).float()


class FewShotInferer(Inferer):
    """Segment target images with a support set: per label, ensembled probabilities at the target's size.

    The support folder is read once (:func:`custom_components.data.fewshot.read_support_folder`). For a batch of
    channel-first targets ``(B, 1, H, W)`` or ``(B, 1, H, W, D)`` each 2D image or slice along ``axis`` (a
    spatial axis of the volume) is resized to ``img_size`` and normalised (``intensity``: min-max, the paper's, unless
    the bundle's ``intensity`` value says otherwise; the support images the same way), then for every label value of
    the support its probability is the mean over ``num_ensemble`` support sets of ``support_size`` examples,
    resized back (bilinear). The output is ``(B, L, *spatial)``: one probability channel per support label
    (in the order of :attr:`label_values`).

    Args:
        support_dir: the support folder (images/ + labels/, or ``<name>`` + ``<name>_label`` pairs).
        img_size: the network's input size.
        support_size: ``S`` (capped by the number of support examples of a label).
        num_ensemble: ``K``, the number of support sets averaged.
        axis: for 3D targets and supports, the spatial axis to slice along.
        seed: seed of the support draws (the same targets give the same output).
        slice_batch: slices per forward pass.
        intensity: the per-slice intensity normalisation of targets and support (the bundle's ``intensity`` value,
            :mod:`custom_components.transforms.intensity`).
    """

    def __init__(
        self,
        support_dir: str,
        img_size: int = 128,
        support_size: int = 16,
        num_ensemble: int = 1,
        axis: int = 2,
        seed: int = 0,
        slice_batch: int = 8,
        intensity="minmax",
    ) -> None:
        super().__init__()
        from ..data.fewshot import read_support_folder
        from ..transforms.intensity import intensity_spec, intensity_transform

        self.intensity = intensity_spec(intensity)
        self._transform = None if self.intensity["mode"] == "minmax" else intensity_transform(self.intensity)
        self.support = read_support_folder(support_dir, size=img_size, axis=axis, intensity=self.intensity)
        self.img_size, self.support_size, self.num_ensemble = int(img_size), int(support_size), int(num_ensemble)
        self.axis, self.seed, self.slice_batch = int(axis), int(seed), int(slice_batch)
        logger.info(
            "support set: %d example(s), label value(s) %s, S=%d, K=%d",
            len(self.support.names), self.support.label_values, self.support_size, self.num_ensemble,
        )

    @property
    def label_values(self) -> list[int]:
        """The label values of the support, one output channel each."""
        return list(self.support.label_values)

    def normalise(self, slices: torch.Tensor) -> torch.Tensor:
        """Each slice of ``(N, 1, h, w)`` normalised on its own, as the support images were."""
        if self._transform is None:
            return _minmax_slices(slices)
        out = [self._transform(s) for s in slices]
        return torch.stack([(y.as_tensor() if isinstance(y, MetaTensor) else torch.as_tensor(y)).to(slices.dtype)
                            for y in out])

    def _slices(self, x: torch.Tensor) -> tuple[torch.Tensor, callable]:
        """2D slices ``(N, 1, h, w)`` of one channel-first target and a function putting ``(N, 1, h, w)`` back."""
        if x.ndim == 3:
            return x[None], lambda y: y[0]
        if x.ndim != 4:
            raise ValueError(f"expected a 2D or 3D channel-first image, got shape {list(x.shape)}")
        dim = 1 + self.axis
        moved = torch.movedim(x[0], dim - 1, 0)[:, None]  # (N, 1, h, w)
        return moved, lambda y: torch.movedim(y[:, 0], 0, dim - 1)[None]

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        device = inputs.device
        gen = torch.Generator().manual_seed(self.seed)
        outputs = []
        for item in torch.as_tensor(inputs):
            slices, put_back = self._slices(item.float())
            h, w = slices.shape[-2:]
            q = self.normalise(F.interpolate(slices, size=(self.img_size,) * 2, mode="bilinear", align_corners=False))
            channels = []
            for value in self.support.label_values:
                imgs, labs = self.support.binary(value)
                pool_i = torch.as_tensor(imgs, device=device)[:, None]
                pool_l = torch.as_tensor(labs, device=device)[:, None]
                p = predict_episode(network, q, pool_i, pool_l, self.support_size, self.num_ensemble, gen, self.slice_batch)
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
                channels.append(put_back(p))
            outputs.append(torch.cat(channels, 0))
        out = torch.stack(outputs)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, meta=inputs.meta, affine=inputs.affine)
        return out


class CombineLabelsd(MapTransform):
    """Per-label probabilities ``(L, *spatial)`` to a label map ``(1, *spatial)``.

    A pixel gets the label value of its most probable channel when that probability exceeds ``threshold``,
    else 0. With ``label_values`` the channels map to those values (e.g. the support's label values), else to
    ``1..L``.
    """

    def __init__(
        self, keys: KeysCollection, label_values: Sequence[int] | None = None, threshold: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_values = None if label_values is None else [int(v) for v in label_values]
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            p = d[key]
            values = self.label_values or list(range(1, p.shape[0] + 1))
            if len(values) != p.shape[0]:
                raise ValueError(f"{len(values)} label values for {p.shape[0]} channels")
            best, arg = p.max(0, keepdim=True)
            lut = torch.as_tensor([0] + values, dtype=torch.float32, device=p.device)
            mapped = torch.where(best > self.threshold, lut[arg + 1], torch.zeros_like(best))
            if isinstance(p, MetaTensor):
                mapped = MetaTensor(mapped, meta=p.meta, affine=p.affine)
            d[key] = mapped
        return d
