"""Per-case segmentation metrics, overlays and a markdown/JSON evaluation report.

The pieces, from the bottom up:

- :func:`compute_case_metrics`: Dice, IoU, HD95 and symmetric average surface distance of one case,
  per class, from two integer label maps (2D or 3D), with MONAI's functional metrics;
- :func:`save_overlay_png`: a three-panel PNG (image, image + ground truth, image + prediction);
- :class:`SegmentationReport`: collects cases and writes ``metrics.json``, ``metrics.md`` and
  ``overlays/<case>.png``;
- :class:`SegmentationReportHandler`: an ignite handler that feeds a :class:`SegmentationReport` from
  the decollated output of a MONAI evaluator and writes it at the end of every evaluation epoch.

Empty-class conventions (shared by all of the above):

- a class absent from both the ground truth and the prediction is scored NaN for every metric, and
  NaN values are left out of every mean;
- a class present in only one of them gets Dice 0 and IoU 0, and NaN surface distances (a surface
  distance to an empty set is undefined); to keep those NaNs from hiding the failure, the summary
  counts per class the cases where the class was missed (``n_missing``: in the ground truth, not in
  the prediction) or hallucinated (``n_false_positive``: in the prediction, not in the ground truth);
- ``empty_distance="zero"`` (an option of every function and class below) scores the surface distances of a missed
  class (in the ground truth, not in the prediction) as 0 instead of NaN: the convention of the official BCP/UA-MT
  test scripts (an empty prediction scores 0 on every metric), which makes HD95/ASD averages comparable with theirs
  but flatters them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)

from ..utils import markdown_table, record_markdown, run_record

__all__ = ["compute_case_metrics", "save_overlay_png", "SegmentationReport", "SegmentationReportHandler"]

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

#: metrics always reported, and those reported when the voxel spacing is known.
VOXEL_METRICS = ("dice", "iou", "hd95", "asd")
MM_METRICS = ("hd95_mm", "asd_mm")
_METRIC_TITLES = {
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (vox)",
    "asd": "ASD (vox)",
    "hd95_mm": "HD95 (mm)",
    "asd_mm": "ASD (mm)",
}
#: values of ``empty_distance``: the surface distances of a missed class.
EMPTY_DISTANCES = ("nan", "zero")
#: file name endings stripped from ``filename_or_obj`` to make a case id (longest first).
_IMAGE_SUFFIXES = (
    ".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".jpg", ".jpeg", ".bmp",
    ".tif", ".tiff", ".npy", ".npz", ".h5", ".hdf5", ".dcm", ".gz",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# per-case metrics
# --------------------------------------------------------------------------------------------------


def _to_tensor(x: ArrayLike) -> torch.Tensor:
    """A plain CPU tensor (no MONAI metadata) from a numpy array, tensor or MetaTensor."""
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x))


def _as_label_map(x: ArrayLike, name: str) -> torch.Tensor:
    """``x`` as an int64 tensor; raises ``ValueError`` when it holds non-integer values."""
    t = _to_tensor(x)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"{name} must be an integer label map, got non-integer values.")
    return t.long()


def _check_label_maps(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``pred`` and ``label`` are same-shaped 2D/3D maps in ``[0, num_classes)``."""
    if pred.shape != label.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} and label shape {tuple(label.shape)} differ.")
    if label.ndim not in (2, 3) or label.numel() == 0:
        raise ValueError(f"expected non-empty 2D or 3D label maps (no channel dim), got shape {tuple(label.shape)}.")
    for name, t in (("label", label), ("pred", pred)):
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} values must be in [0, {num_classes}), got values in [{low}, {high}].")


def _surface_distances(y_pred: torch.Tensor, y: torch.Tensor, spacing: Sequence[float] | None) -> tuple[float, float]:
    """HD95 and symmetric ASD of two one-channel one-hot tensors ``(1, 1, *spatial)``, both non-empty."""
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95.0, spacing=spacing)
    asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
    return float(hd95), float(asd)


def _check_empty_distance(empty_distance: str) -> str:
    if empty_distance not in EMPTY_DISTANCES:
        raise ValueError(f"empty_distance must be one of {EMPTY_DISTANCES}, got {empty_distance!r}.")
    return empty_distance


def _class_metrics(
    pred: torch.Tensor, label: torch.Tensor, class_index: int, spacing: Sequence[float] | None,
    empty_distance: str = "nan",
) -> dict[str, float]:
    """Metrics of one class of two label maps, following the module's empty-class conventions."""
    y_pred = (pred == class_index)[None, None].float()  # the class's channel of the one-hot encoding
    y = (label == class_index)[None, None].float()
    n_pred, n_gt = int(y_pred.sum()), int(y.sum())
    names = VOXEL_METRICS + (MM_METRICS if spacing is not None else ())
    metrics: dict[str, float] = dict.fromkeys(names, math.nan)
    if n_gt or n_pred:
        metrics["dice"] = float(compute_dice(y_pred, y, include_background=True, ignore_empty=False))
        metrics["iou"] = float(compute_iou(y_pred, y, include_background=True, ignore_empty=False))
    if n_gt and n_pred:
        metrics["hd95"], metrics["asd"] = _surface_distances(y_pred, y, None)
        if spacing is not None:
            metrics["hd95_mm"], metrics["asd_mm"] = _surface_distances(y_pred, y, spacing)
    elif n_gt and empty_distance == "zero":  # missed class, official BCP/UA-MT convention
        for name in names[2:]:
            metrics[name] = 0.0
    metrics["gt_voxels"], metrics["pred_voxels"] = n_gt, n_pred
    return metrics


def compute_case_metrics(
    pred: ArrayLike,
    label: ArrayLike,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    include_background: bool = False,
    empty_distance: str = "nan",
) -> dict[str, dict[str, float]]:
    """Per-class Dice, IoU, HD95 and symmetric average surface distance of one case.

    Each class is scored on its channel of the one-hot encoding with :func:`monai.metrics.compute_dice`,
    :func:`~monai.metrics.compute_iou`, :func:`~monai.metrics.compute_hausdorff_distance` (95th
    percentile, symmetric) and :func:`~monai.metrics.compute_average_surface_distance`
    (``symmetric=True``), one class at a time so that memory stays at a few copies of the volume
    whatever the number of classes.

    Empty classes: a class absent from both ``label`` and ``pred`` is NaN for every metric; a class
    present in only one of them gets ``dice = iou = 0`` and NaN distances (undefined). The voxel
    counts ``gt_voxels`` and ``pred_voxels`` are returned too, so that callers can tell these cases apart.

    Args:
        pred: predicted integer label map, spatial shape only: ``(H, W)`` or ``(H, W, D)``; numpy or torch.
        label: ground-truth integer label map of the same shape.
        num_classes: number of classes including the background (label 0); values must lie in
            ``[0, num_classes)``.
        spacing: voxel size along each spatial axis (mm). When given, ``hd95_mm`` and ``asd_mm`` are
            added to the distances in voxels ``hd95`` and ``asd``.
        include_background: also score class 0.
        empty_distance: ``"nan"`` (default): a missed class has NaN surface distances; ``"zero"``: 0, as the
            official BCP/UA-MT test scripts.

    Returns:
        ``{str(class_index): {"dice", "iou", "hd95", "asd"[, "hd95_mm", "asd_mm"], "gt_voxels",
        "pred_voxels"}}`` for the classes ``0 or 1 .. num_classes - 1``; the counts are ints.

    Raises:
        ValueError: shapes differ, are not 2D/3D, values are not integers or lie outside
            ``[0, num_classes)``, or ``spacing`` has the wrong length.
    """
    _check_empty_distance(empty_distance)
    pred_t, label_t = _as_label_map(pred, "pred"), _as_label_map(label, "label")
    _check_label_maps(pred_t, label_t, num_classes)
    if spacing is not None:
        spacing = [float(s) for s in np.ravel(spacing)]
        if len(spacing) != label_t.ndim:
            raise ValueError(f"spacing {spacing} must have one value per spatial axis ({label_t.ndim}).")
    first = 0 if include_background else 1
    return {str(c): _class_metrics(pred_t, label_t, c, spacing, empty_distance) for c in range(first, num_classes)}


# --------------------------------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------------------------------


def _class_colour(class_index: int) -> tuple[float, float, float]:
    """The fixed colour of foreground class ``class_index`` >= 1: matplotlib's ``tab10`` colours, then
    the light ``tab20`` shades, cycling after 20 classes."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors) + list(colormaps["tab20"].colors[1::2])
    return tuple(palette[(class_index - 1) % len(palette)])


def _spatial_image(image: ArrayLike, spatial_shape: Sequence[int]) -> np.ndarray | None:
    """``image`` with its spatial shape (first channel of a channel-first image), or None if it does not fit."""
    img = _to_tensor(image)
    if img.ndim == len(spatial_shape) + 1:
        img = img[0]
    return img.float().numpy() if tuple(img.shape) == tuple(spatial_shape) else None


def _select_slice(label: np.ndarray, pred: np.ndarray, axis: int, slice_index: int | None) -> int:
    """The slice along ``axis`` with the most ground-truth foreground (else predicted, else the middle)."""
    if slice_index is not None:
        return int(slice_index) % label.shape[axis]
    other = tuple(a for a in range(label.ndim) if a != axis % label.ndim)
    for volume in (label, pred):
        counts = (volume > 0).sum(axis=other)
        if counts.any():
            return int(counts.argmax())
    return label.shape[axis] // 2


def _take_slices(
    arrays: Sequence[np.ndarray], axis: int, slice_index: int | None
) -> tuple[list[np.ndarray], int | None]:
    """2D copies of ``(image, label, pred)`` (3D: one slice along ``axis``; 2D: unchanged) and the index."""
    image, label, pred = arrays
    if label.ndim == 2:
        return [np.array(a) for a in arrays], None
    index = _select_slice(label, pred, axis, slice_index)
    return [np.take(a, index, axis=axis) for a in arrays], index  # np.take copies: no view of the volume


def _normalise(image: np.ndarray) -> np.ndarray:
    """Image intensities clipped to their 0.5-99.5 percentiles and scaled to [0, 1] for display."""
    low, high = np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 1.0)
    return np.clip((image - low) / (high - low), 0, 1) if high > low else np.zeros_like(image, dtype=float)


def _label_rgba(label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGBA image colouring each foreground class with its fixed colour; background transparent."""
    rgba = np.zeros((*label.shape, 4))
    for c in np.unique(label[label > 0]):
        rgba[label == c] = (*_class_colour(int(c)), alpha)
    return rgba


def _render_overlay(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    class_names: Sequence[str] | None,
    title: str = "",
) -> None:
    """Write the three-panel PNG of 2D ``image``, ``label`` and ``pred`` (all of the same shape)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(12, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    gray = _normalise(image.astype(float))
    for ax, overlay, name in zip(
        fig.subplots(1, 3), (None, label, pred), ("image", "ground truth", "prediction"), strict=True
    ):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if overlay is not None:
            ax.imshow(_label_rgba(overlay), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    present = sorted(int(c) for c in np.union1d(np.unique(label), np.unique(pred)) if c > 0)
    if present:
        names = [class_names[c] if class_names and c < len(class_names) else f"class {c}" for c in present]
        handles = [Patch(color=_class_colour(c), label=n) for c, n in zip(present, names, strict=True)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.88, bottom=0.1 if present else 0.02, wspace=0.03)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)


def save_overlay_png(
    image: ArrayLike,
    label: ArrayLike,
    pred: ArrayLike,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    axis: int = -1,
    slice_index: int | None = None,
) -> None:
    """Save a PNG with three panels: the image, the image with the ground truth, the image with the prediction.

    Each foreground class has a fixed colour (``tab10``, then light ``tab20`` shades) and a
    legend entry for the classes visible in the slice. Arrays are shown as stored: the first array
    axis runs down the panel. Rendered with matplotlib's Agg canvas (no display needed).

    Args:
        image: ``(H, W[, D])`` or channel-first ``(C, H, W[, D])`` (channel 0 is shown).
        label: ground-truth integer label map ``(H, W[, D])``.
        pred: predicted integer label map of the same shape.
        path: output PNG file; parent folders are created.
        class_names: names for the legend, indexed by class (index 0 = background); default ``class <c>``.
        axis: for 3D inputs, the axis to slice along.
        slice_index: for 3D inputs, the slice to show; default the slice with the most ground-truth
            foreground (if none, the most predicted foreground; if none, the middle slice).

    Raises:
        ValueError: the shapes of ``label``, ``pred`` and ``image`` do not match.
    """
    label_np, pred_np = _to_tensor(label).numpy(), _to_tensor(pred).numpy()
    image_np = _spatial_image(image, label_np.shape)
    if image_np is None or label_np.shape != pred_np.shape:
        shapes = f"image {tuple(np.shape(image))}, label {label_np.shape} and pred {pred_np.shape}"
        raise ValueError(f"{shapes} must share a spatial shape.")
    (img2d, lab2d, pred2d), index = _take_slices((image_np, label_np, pred_np), axis, slice_index)
    _render_overlay(img2d, lab2d, pred2d, path, class_names, "" if index is None else f"slice {index} (axis {axis})")


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, population std and count of the non-NaN ``values`` (NaN mean/std when there are none)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "case"


class SegmentationReport:
    """Collects per-case segmentation metrics and writes ``metrics.json``, ``metrics.md`` and overlays.

    Cases are scored when added (see :func:`compute_case_metrics` for the metrics and the empty-class
    conventions); only their metrics and, for the first ``num_overlays`` cases given an image, one 2D
    slice of image, label and prediction are kept, so memory does not grow with the volumes.

    Args:
        output_dir: folder of the report files.
        class_names: one name per class, background (label 0) first; the number of classes is
            ``len(class_names)``.
        include_background: also score and report class 0 (it is never part of the foreground mean).
        num_overlays: number of cases (the first ones added with an image) to draw overlays for.
        overlay_axis: for 3D cases, the axis the overlay slice is taken along.
        empty_distance: surface distances of a missed class: ``"nan"`` or ``"zero"`` (official BCP/UA-MT).

    Example::

        report = SegmentationReport("eval", ["background", "liver", "tumour"])
        report.add_case("case_001", pred, label, image=image, spacing=(0.8, 0.8, 2.5))
        report.write()  # eval/metrics.json, eval/metrics.md, eval/overlays/case_001.png
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        include_background: bool = False,
        num_overlays: int = 3,
        overlay_axis: int = -1,
        empty_distance: str = "nan",
    ) -> None:
        if len(class_names) < 2:
            raise ValueError(f"class_names needs the background and at least one class, got {list(class_names)}.")
        self.output_dir = str(output_dir)
        self.class_names = [str(n) for n in class_names]
        self.include_background = include_background
        self.num_overlays = num_overlays
        self.overlay_axis = overlay_axis
        self.empty_distance = _check_empty_distance(empty_distance)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def cases(self) -> list[dict]:
        """The case records added so far: ``{"case", "spacing", "metrics": {class_name: {...}}}``."""
        return list(self._cases)

    def reset(self) -> None:
        """Forget all cases and overlays."""
        self._cases: list[dict] = []
        self._overlays: list[tuple[str, list[np.ndarray], int | None]] = []
        self._ids: set[str] = set()

    def _unique_id(self, case_id: str) -> str:
        unique, k = case_id, 1
        while unique in self._ids:
            k += 1
            unique = f"{case_id}_{k}"
        self._ids.add(unique)
        return unique

    def set_cases(self, records: Sequence[dict]) -> None:
        """Replace the cases by already scored records (as in :attr:`cases`, e.g. gathered from all
        processes); the overlays kept so far stay."""
        self._cases, self._ids = [], set()
        for record in records:
            self._cases.append({**record, "case": self._unique_id(str(record["case"]))})

    def add_case(
        self,
        case_id: str,
        pred: ArrayLike,
        label: ArrayLike,
        image: ArrayLike | None = None,
        spacing: Sequence[float] | None = None,
    ) -> dict:
        """Score one case and keep its metrics (and an overlay slice while fewer than ``num_overlays``).

        Args:
            case_id: name of the case; a repeated name gets a ``_2``, ``_3``... suffix.
            pred: predicted integer label map ``(H, W[, D])``.
            label: ground-truth integer label map of the same shape, values in ``[0, len(class_names))``.
            image: optional ``(H, W[, D])`` or ``(C, H, W[, D])`` image for the overlay.
            spacing: optional voxel size (mm) per spatial axis, for the ``*_mm`` distances.

        Returns:
            The case record ``{"case", "spacing", "metrics": {class_name: {metric: value}}}``.

        Raises:
            ValueError: naming the case, when shapes differ or values are out of range (see
                :func:`compute_case_metrics`).
        """
        try:
            per_class = compute_case_metrics(pred, label, self.num_classes, spacing, self.include_background,
                                             self.empty_distance)
        except ValueError as err:
            raise ValueError(f"case {case_id!r}: {err}") from err
        record = {
            "case": self._unique_id(str(case_id)),
            "spacing": None if spacing is None else [float(s) for s in np.ravel(spacing)],
            "metrics": {self.class_names[int(c)]: m for c, m in per_class.items()},
        }
        self._cases.append(record)
        if image is not None and len(self._overlays) < self.num_overlays:
            self._keep_overlay(record["case"], image, label, pred)
        return record

    def _keep_overlay(self, case_id: str, image: ArrayLike, label: ArrayLike, pred: ArrayLike) -> None:
        label_np, pred_np = _as_label_map(label, "label").numpy(), _as_label_map(pred, "pred").numpy()
        image_np = _spatial_image(image, label_np.shape)
        if image_np is None:
            shape = tuple(np.shape(image))
            logger.warning("case %r: image shape %s does not fit label %s; no overlay.", case_id, shape, label_np.shape)
            return
        slices, index = _take_slices((image_np, label_np, pred_np), self.overlay_axis, None)
        self._overlays.append((case_id, slices, index))

    def _metric_names(self) -> tuple[str, ...]:
        has_mm = any(c["spacing"] is not None for c in self._cases)
        return VOXEL_METRICS + (MM_METRICS if has_mm else ())

    def summary(self) -> dict:
        """Aggregate the cases.

        Returns:
            ``{"n_cases", "classes": {name: {metric: {"mean", "std", "n"}, "n_missing",
            "n_false_positive"}}, "mean": {metric: value}}``. Per-class statistics ignore NaN
            (population std; ``n`` counts the scored cases); ``mean`` is the mean of the per-class
            means over the foreground classes (background excluded), ignoring classes never scored.
            ``n_missing`` counts cases where the class is in the ground truth but not the prediction,
            ``n_false_positive`` the reverse. The ``*_mm`` metrics appear when any case had a spacing.
        """
        metric_names = self._metric_names()
        classes: dict[str, dict] = {}
        for name in self._reported_classes():
            rows = [case["metrics"][name] for case in self._cases]
            entry: dict[str, Any] = {m: _stats([r.get(m, math.nan) for r in rows]) for m in metric_names}
            entry["n_missing"] = sum(1 for r in rows if r["gt_voxels"] > 0 and r["pred_voxels"] == 0)
            entry["n_false_positive"] = sum(1 for r in rows if r["gt_voxels"] == 0 and r["pred_voxels"] > 0)
            classes[name] = entry
        foreground = self.class_names[1:]
        mean = {m: _stats([classes[n][m]["mean"] for n in foreground])["mean"] for m in metric_names}
        return {"n_cases": len(self._cases), "classes": classes, "mean": mean}

    def _reported_classes(self) -> list[str]:
        return self.class_names if self.include_background else self.class_names[1:]

    def table(self, summary: dict | None = None) -> str:
        """The per-class markdown table (mean of each metric, scored cases, misses, false positives)."""
        summary = self.summary() if summary is None else summary
        metric_names = self._metric_names()
        headers = ["class", "n", *(_METRIC_TITLES[m] for m in metric_names), "missed", "false pos."]
        rows = []
        for name, entry in summary["classes"].items():
            stats = [entry[m]["mean"] for m in metric_names]
            rows.append([name, entry["dice"]["n"], *stats, entry["n_missing"], entry["n_false_positive"]])
        foreground = [e for n, e in summary["classes"].items() if n != self.class_names[0]]
        totals = [sum(e[k] for e in foreground) for k in ("n_missing", "n_false_positive")]
        rows.append(["**mean (foreground)**", None, *(summary["mean"][m] for m in metric_names), *totals])
        return markdown_table(headers, rows)

    def write(self, record: dict | None = None) -> dict[str, str]:
        """Write ``metrics.json``, ``metrics.md`` and ``overlays/<case>.png`` under ``output_dir``.

        Args:
            record: provenance (command, date, hardware) as made by :func:`custom_components.utils.run_record`;
                made for the current process when None.

        Returns:
            ``{relative path: absolute path}`` of every file written.
        """
        record = run_record() if record is None else record
        summary = self.summary()
        os.makedirs(self.output_dir, exist_ok=True)
        written = []
        for case_id, (img, lab, pred), index in self._overlays:
            rel = f"overlays/{_safe_filename(case_id)}.png"
            title = case_id if index is None else f"{case_id}, slice {index} (axis {self.overlay_axis})"
            _render_overlay(img, lab, pred, os.path.join(self.output_dir, rel), self.class_names, title)
            written.append(rel)
        payload = {"class_names": self.class_names, "summary": summary, "cases": self._cases, "record": record,
                   "empty_distance": self.empty_distance}
        with open(os.path.join(self.output_dir, "metrics.json"), "w") as f:
            json.dump(_json_safe(payload), f, indent=2, allow_nan=False)
        with open(os.path.join(self.output_dir, "metrics.md"), "w") as f:
            f.write(self._markdown(summary, record, written))
        written += ["metrics.json", "metrics.md"]
        return {rel: os.path.abspath(os.path.join(self.output_dir, rel)) for rel in written}

    def _markdown(self, summary: dict, record: dict, overlays: list[str]) -> str:
        text = (
            f"# Segmentation report\n\n{record_markdown(record)}\n"
            f"Cases: {summary['n_cases']}. Each value is a mean over the cases where it is defined (`n` counts "
            "them for Dice); a class in neither ground truth nor prediction is not scored, one in only one of "
            "them scores Dice = IoU = 0 with no surface distance and is counted under `missed` (ground truth "
            "only) or `false pos.` (prediction only). HD95: 95th percentile symmetric Hausdorff distance; "
            "ASD: symmetric average surface distance. The mean row averages the foreground class means.\n\n"
            + ("Convention `empty_distance=zero` (official BCP/UA-MT test scripts): a missed class scores HD95 = "
               "ASD = 0 instead of having no surface distance.\n\n" if self.empty_distance == "zero" else "")
            + f"{self.table(summary)}"
        )
        if overlays:
            text += "\n## Overlays\n\n" + "".join(f"![{rel}]({rel})\n" for rel in overlays)
        return text


# --------------------------------------------------------------------------------------------------
# ignite handler
# --------------------------------------------------------------------------------------------------


def _case_id_from_meta(tensors: Sequence[Any]) -> str | None:
    """Base name (without image suffix) of the first ``filename_or_obj`` in the tensors' metadata."""
    for t in tensors:
        name = t.meta.get("filename_or_obj") if isinstance(t, MetaTensor) else None
        if isinstance(name, (list, tuple)):
            name = name[0] if name else None
        if name:
            base = os.path.basename(str(name))
            for suffix in _IMAGE_SUFFIXES:
                if base.lower().endswith(suffix):
                    return base[: -len(suffix)]
            return base
    return None


def _spacing_from_meta(tensors: Sequence[Any], ndim: int) -> list[float] | None:
    """Voxel size from the first MetaTensor with a physical affine (non-identity, or loaded with ``pixdim``).

    The spacing is the length of the affine's first ``ndim`` columns, so it follows resampling.
    """
    for t in tensors:
        if not isinstance(t, MetaTensor):
            continue
        affine = torch.as_tensor(t.affine, dtype=torch.float64)
        if affine.ndim != 2:
            continue
        if "pixdim" in t.meta or not torch.equal(affine, torch.eye(affine.shape[0], dtype=torch.float64)):
            return [float(s) for s in torch.linalg.norm(affine[:ndim, :ndim], dim=0)]
    return None


def _label_map_from_output(x: ArrayLike) -> torch.Tensor:
    """A spatial label map from a channel-first ``(C, *spatial)`` output: argmax if C > 1, else channel 0."""
    t = _to_tensor(x)
    if t.ndim < 3:
        raise ValueError(f"expected a channel-first (C, H, W[, D]) output, got shape {tuple(t.shape)}.")
    return t.argmax(0) if t.shape[0] > 1 else t[0]


def _dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SegmentationReportHandler:
    """Ignite handler writing a :class:`SegmentationReport` at the end of every evaluation epoch.

    On ``ITERATION_COMPLETED`` it scores each item of ``engine.state.output`` (a list of decollated
    dicts, as MONAI evaluators produce after post-processing; a batched dict is decollated first).
    ``pred`` and ``label`` are channel-first: one-hot or probabilities with C > 1 channels
    (argmax over the channel) or a single-channel label map. The case id is the base name of
    ``meta["filename_or_obj"]`` of pred/label/image without its image suffix, else ``case_<index>``;
    the spacing (for mm distances) comes from the MetaTensor's affine when it is physical.
    On ``EPOCH_COMPLETED`` it gathers the cases of all processes (when torch.distributed is
    initialised), writes the report on rank 0, logs the per-class table and stores the foreground
    mean Dice in ``engine.state.metrics[metric_name]`` on every rank. It starts afresh each epoch.

    Args:
        output_dir: folder of the report (``metrics.json``, ``metrics.md``, ``overlays/``); rewritten each epoch.
        class_names: one name per class, background first.
        pred_key, label_key, image_key: keys of the output dicts; the image is optional (overlays only).
        num_overlays: number of cases to draw overlays for (only rank 0's cases).
        overlay_axis: axis of the 3D overlay slice, counted in spatial axes.
        include_background: also score class 0.
        metric_name: key of the mean Dice in ``engine.state.metrics``.
        empty_distance: surface distances of a missed class: ``"nan"`` or ``"zero"`` (official BCP/UA-MT).

    Example (``evaluate.json``)::

        "val_handlers": [{"_target_": "custom_components.engines.SegmentationReportHandler",
                          "output_dir": "$@output_dir + '/eval'", "class_names": ["background", "liver"]}]
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        num_overlays: int = 3,
        overlay_axis: int = -1,
        include_background: bool = False,
        metric_name: str = "mean_dice",
        empty_distance: str = "nan",
    ) -> None:
        self.report = SegmentationReport(output_dir, class_names, include_background, num_overlays, overlay_axis,
                                         empty_distance)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.metric_name = metric_name
        self._count = 0

    def attach(self, engine: Any) -> None:
        """Register the handler's callbacks on an ignite ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Any = None) -> None:
        """Forget the cases of the previous epoch."""
        self.report.reset()
        self._count = 0

    def iteration_completed(self, engine: Any) -> None:
        """Score every item of ``engine.state.output``."""
        output = engine.state.output
        if output is None:
            return
        items = decollate_batch(output, detach=True) if isinstance(output, dict) else output
        for item in items:
            self._add_item(item)

    def _add_item(self, item: dict) -> None:
        pred, label, image = item[self.pred_key], item[self.label_key], item.get(self.image_key)
        case_id = _case_id_from_meta((pred, label, image)) or f"case_{self._count:04d}"
        self._count += 1
        try:
            pred_map, label_map = _label_map_from_output(pred), _label_map_from_output(label)
        except ValueError as err:
            raise ValueError(f"case {case_id!r}: {err}") from err
        spacing = _spacing_from_meta((pred, label, image), label_map.ndim)
        self.report.add_case(case_id, pred_map, label_map, image=image, spacing=spacing)

    def _gather(self, world_size: int) -> None:
        """Replace the local cases by the cases of all ranks, in rank order (overlays stay local)."""
        gathered: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(gathered, self.report.cases)
        self.report.set_cases([record for records in gathered for record in records])

    def epoch_completed(self, engine: Any) -> None:
        """Write the report (rank 0), log the per-class table and set ``engine.state.metrics[metric_name]``."""
        rank, world_size = _dist_info()
        if world_size > 1:
            self._gather(world_size)
        summary = self.report.summary()
        engine.state.metrics[self.metric_name] = summary["mean"]["dice"]
        if rank == 0:
            paths = self.report.write()
            logger.info(
                "segmentation report, %d cases (%s):\n%s",
                summary["n_cases"],
                paths["metrics.md"],
                self.report.table(summary),
            )
