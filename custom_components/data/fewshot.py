"""Tasks and episodes for in-context (few-shot) segmentation: UniverSeg's data side.

A *task* is a set of 2D (image, binary label) pairs that share what is labeled ("this structure, in this kind
of image"). An *episode* is one query and a support set of ``S`` other pairs of the same task. This module has:

- :class:`SyntheticTask` / :func:`synthetic_tasks`: a synthetic task generator built on the shared toolkit
  (:mod:`custom_components.data.synthetic`). A task is a scene recipe (two or three kinds of structure, each with
  its size, position, orientation, intensity and texture, a background texture, bias, blur and noise) plus the
  index of the structure that is labeled; images of a task are drawn from the recipe. The structure kinds
  (:data:`STRUCTURE_KINDS`) are split into training kinds and held-out kinds (:data:`HELDOUT_KINDS`), which never
  appear in a training task, not even unlabeled; thousands of distinct tasks follow from one seed.
- :class:`ArrayTask` / :func:`tasks_from_datalist`: real labeled data given as a datalist. Each multi-class
  label is split into one binary task per class, 3D volumes are sliced along each chosen axis (a task is
  ``<dataset>/<axis>/<label>``), and every slice is resized to ``size x size`` (images bilinear, labels
  nearest) and normalised (min-max unless the bundle's ``intensity`` says otherwise: :func:`image_normaliser`).
- :class:`EpisodicDataset`: each item draws a task *uniformly over tasks* (not over images), then ``S + 1``
  distinct images of it; in-task augmentation runs per image, then task augmentation runs once on the query and
  the whole support together (both MONAI transforms from the config).
- :func:`read_support_folder`: the support set of inference, with clear errors.
- :func:`generate_fewshot_synthetic`: the bundle's embedded demo dataset (held-out tasks written as NIfTI with
  a datalist, and an inference folder with a support folder).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Resize, ScaleIntensity
from monai.utils import convert_to_numpy
from scipy import ndimage

from .synthetic import (
    Ellipsoid,
    Grid,
    Superellipsoid,
    Tube,
    add_gaussian_noise,
    apply_bias_field,
    build_dataset_atomically,
    crescent,
    deform,
    ring,
    smooth_random_field,
    write_datalist,
    write_nifti,
)
from .validation import InputDataError

__all__ = [
    "STRUCTURE_KINDS",
    "HELDOUT_KINDS",
    "TRAIN_KINDS",
    "SyntheticTask",
    "synthetic_tasks",
    "ArrayTask",
    "tasks_from_datalist",
    "minmax",
    "EpisodicDataset",
    "SupportSet",
    "read_support_folder",
    "generate_fewshot_synthetic",
]

logger = logging.getLogger(__name__)

#: structure kinds of the synthetic generator.
STRUCTURE_KINDS = ("ellipse", "box", "rhombus", "ring", "blobs", "star", "crescent", "tube")
#: kinds held out of training (never labeled, never drawn): the unseen task families.
HELDOUT_KINDS = ("crescent", "tube")
TRAIN_KINDS = tuple(k for k in STRUCTURE_KINDS if k not in HELDOUT_KINDS)

_FOV = 100.0  # mm, the field of view of a synthetic image whatever its pixel size


def minmax(x: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant image gives zeros), float32."""
    return convert_to_numpy(ScaleIntensity(minv=0.0, maxv=1.0)(np.asarray(x, dtype=np.float32)))


def image_normaliser(intensity="minmax") -> Callable[[np.ndarray], np.ndarray]:
    """The per-image normalisation of a 2D image as the bundle's ``intensity`` value selects it
    (:mod:`custom_components.transforms.intensity`; ``"minmax"``, the paper's, is :func:`minmax`), float32."""
    from ..transforms.intensity import intensity_spec, intensity_transform

    spec = intensity_spec(intensity)
    if spec["mode"] == "minmax":
        return minmax
    transform = intensity_transform(spec)
    return lambda x: convert_to_numpy(transform(np.asarray(x, dtype=np.float32)[None]))[0].astype(np.float32)


# --------------------------------------------------------------------------------------------------
# synthetic tasks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Structure:
    kind: str
    radius: float  # mm
    elongation: float  # ratio of the two radii
    center: tuple[float, float]  # mean position, mm
    spread: float  # std of the position, mm
    rotation: float  # mean angle
    level: float  # mean intensity
    texture: float  # texture amplitude
    wavelength: float  # texture scale, mm


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic binary segmentation task: a scene recipe and the index of the labeled structure.

    Image ``j`` of the task is a pure function of ``(seed, j)``. Use :func:`synthetic_tasks` to draw many tasks.

    Args:
        name: task name (``synthetic/<label kind>/<seed>``).
        seed: seed of the recipe and of the images.
        structures: the scene's structures (drawn in order, later ones on top).
        target: index of the labeled structure.
        background: ``(level, texture, wavelength)`` of the background.
        noise: standard deviation of the Gaussian noise.
        blur: standard deviation (pixels at 128 px) of the Gaussian blur.
        bias: strength of the multiplicative bias field.
        num_images: size of the task's image pool (indices ``0..num_images-1``).
        size: image size in pixels.
    """

    name: str
    seed: int
    structures: tuple[_Structure, ...]
    target: int
    background: tuple[float, float, float]
    noise: float
    blur: float
    bias: float
    num_images: int = 64
    size: int = 128

    @property
    def family(self) -> str:
        """The labeled structure kind (the task family)."""
        return self.structures[self.target].kind

    def __len__(self) -> int:
        return self.num_images

    def _shape(self, s: _Structure, rng: np.random.Generator):
        c = np.asarray(s.center) + rng.normal(0.0, s.spread, 2)
        r = s.radius * rng.uniform(0.8, 1.25)
        a, b = r, r / s.elongation
        rot = s.rotation + rng.normal(0.0, 0.3)
        if s.kind == "ellipse":
            shape = Ellipsoid(c, (a, b), rot)
        elif s.kind == "box":
            shape = Superellipsoid(c, (a, b), 5.0, rot)
        elif s.kind == "rhombus":
            shape = Superellipsoid(c, (a, b), 1.0, rot)
        elif s.kind == "ring":
            shape = ring(c, (a, b), (0.6 * a, 0.6 * b), rot)
        elif s.kind == "star":
            return deform(Ellipsoid(c, (a, a), rot), rng, amplitude=0.3, wavelength=1.5 * a, n_components=4)
        elif s.kind == "blobs":
            shapes = [Ellipsoid(c + rng.normal(0, r, 2), (0.35 * r,) * 2) for _ in range(int(rng.integers(3, 6)))]
            from .synthetic import Union

            shape = Union(tuple(shapes))
        elif s.kind == "crescent":
            shape = crescent(c, (a, a), (0.45 * a, 0.0), (0.85 * a, 0.85 * a), rot)
        elif s.kind == "tube":
            t = np.linspace(-1.0, 1.0, 5)
            direction = np.array([math.cos(rot), math.sin(rot)])
            normal = np.array([-direction[1], direction[0]])
            wiggle = rng.normal(0.0, 0.25 * r, 5)
            pts = c + 1.6 * r * t[:, None] * direction + wiggle[:, None] * normal
            shape = Tube.from_curve(pts, 0.18 * r * rng.uniform(0.8, 1.2))
        else:
            raise ValueError(f"unknown structure kind {s.kind!r}")
        return deform(shape, rng, amplitude=0.08, wavelength=2.0 * r)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` of the task: ``(image, label)``, float32 ``(size, size)``, image in [0, 1], label {0, 1}."""
        rng = np.random.default_rng([self.seed, int(index), 7])
        n = self.size
        grid = Grid((n, n), spacing=_FOV / n)
        spacing = _FOV / n
        level, tex, wl = self.background
        image = level + tex * smooth_random_field((n, n), rng, wl, spacing)
        label = np.zeros((n, n), dtype=bool)
        for k, s in enumerate(self.structures):
            mask = grid.mask(self._shape(s, rng))
            value = s.level + rng.normal(0.0, 0.05) + s.texture * smooth_random_field((n, n), rng, s.wavelength, spacing)
            image = np.where(mask, value, image)
            label = mask if k == self.target else label & ~mask
        image = apply_bias_field(image - image.min() + 0.1, rng, self.bias, 40.0, spacing)
        if self.blur > 0:
            image = ndimage.gaussian_filter(image, self.blur * n / 128.0)
        image = add_gaussian_noise(image, rng, self.noise * float(image.std() + 1e-3))
        return minmax(image), label.astype(np.float32)


def _draw_structure(kind: str, rng: np.random.Generator) -> _Structure:
    radius = float(rng.uniform(7.0, 20.0))
    return _Structure(
        kind=kind,
        radius=radius,
        elongation=float(rng.uniform(1.0, 2.2)) if kind not in ("star", "blobs", "crescent") else 1.0,
        center=tuple(float(v) for v in rng.uniform(-_FOV / 4, _FOV / 4, 2)),
        spread=float(rng.uniform(2.0, 10.0)),
        rotation=float(rng.uniform(0.0, math.pi)),
        level=float(rng.uniform(0.0, 1.0)),
        texture=float(rng.uniform(0.0, 0.12)),
        wavelength=float(rng.uniform(3.0, 15.0)),
    )


def synthetic_tasks(
    num_tasks: int,
    seed: int = 0,
    kinds: Sequence[str] | str = "train",
    num_images: int = 64,
    size: int = 128,
    max_structures: int = 3,
) -> list[SyntheticTask]:
    """Draw ``num_tasks`` distinct synthetic tasks from a seed.

    Each task has 1 to ``max_structures`` structures of distinct kinds taken from ``kinds``; the labeled one
    cycles over ``kinds`` so that every family is represented. Intensities are drawn so that the labeled
    structure differs from the background by at least 0.3 (the other structures may resemble it: the support
    set tells which one is meant).

    Args:
        num_tasks: number of tasks.
        seed: the tasks are a pure function of it.
        kinds: ``"train"`` (:data:`TRAIN_KINDS`), ``"heldout"`` (:data:`HELDOUT_KINDS`; the other structures of a
            held-out scene are training kinds), or an explicit list.
        num_images: image pool size of each task.
        size: image size.
        max_structures: most structures in one scene.
    """
    if kinds == "train":
        label_kinds, other_kinds = TRAIN_KINDS, TRAIN_KINDS
    elif kinds == "heldout":
        label_kinds, other_kinds = HELDOUT_KINDS, TRAIN_KINDS
    else:
        label_kinds = other_kinds = tuple(kinds)
    unknown = set(label_kinds) - set(STRUCTURE_KINDS)
    if unknown:
        raise ValueError(f"unknown structure kinds {sorted(unknown)}; known: {STRUCTURE_KINDS}")
    tasks = []
    for t in range(num_tasks):
        task_seed = int(np.random.SeedSequence([seed, t]).generate_state(1)[0])
        rng = np.random.default_rng(task_seed)
        label_kind = label_kinds[t % len(label_kinds)]
        pool = [k for k in other_kinds if k != label_kind]
        n_other = int(rng.integers(0, min(max_structures, len(pool) + 1)))
        others = list(rng.choice(pool, size=n_other, replace=False)) if n_other else []
        bg = (float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.0, 0.12)), float(rng.uniform(5.0, 30.0)))
        structures = [_draw_structure(str(k), rng) for k in others]
        target = _draw_structure(label_kind, rng)
        while abs(target.level - bg[0]) < 0.3:
            target = _Structure(**{**target.__dict__, "level": float(rng.uniform(0.0, 1.0))})
        pos = int(rng.integers(0, len(structures) + 1))
        structures.insert(pos, target)
        tasks.append(
            SyntheticTask(
                name=f"synthetic/{label_kind}/{t:05d}",
                seed=task_seed,
                structures=tuple(structures),
                target=pos,
                background=bg,
                noise=float(rng.uniform(0.0, 0.2)),
                blur=float(rng.uniform(0.0, 1.0)),
                bias=float(rng.uniform(0.0, 0.3)),
                num_images=num_images,
                size=size,
            )
        )
    return tasks


# --------------------------------------------------------------------------------------------------
# real tasks from datalists
# --------------------------------------------------------------------------------------------------


@dataclass
class ArrayTask:
    """A task held in memory: ``images`` and binary ``labels`` of shape ``(N, H, W)``, float32."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    subjects: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.labels[index]


def _resize(x: np.ndarray, size: int, order: int) -> np.ndarray:
    """A 2D array resized to ``size x size``: bilinear (``order=1``, ``align_corners=False``) or nearest (0)."""
    mode, align_corners = ("bilinear", False) if order else ("nearest", None)
    resize = Resize((size, size), mode=mode, align_corners=align_corners, dtype=torch.float32)
    return convert_to_numpy(resize(np.asarray(x, dtype=np.float32)[None]))[0]


def _load(path: str) -> np.ndarray:
    from monai.transforms import LoadImage

    arr = np.asarray(LoadImage(image_only=True)(path))
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:  # RGB(A) 2D image: greyscale
        arr = arr[..., :3].mean(-1)
    return arr


def tasks_from_datalist(
    items: Sequence[dict],
    dataset: str = "dataset",
    size: int = 128,
    axes: Sequence[int] = (0, 1, 2),
    min_foreground: int = 10,
    min_images: int = 2,
    slice_step: int = 1,
    intensity="minmax",
) -> list[ArrayTask]:
    """Binary 2D tasks from labeled datalist items (``image``, ``label``, optional ``task`` and ``subject``).

    Every label value ``c > 0`` of an item gives the binary map ``label == c``; a 3D volume gives the slices along
    each axis of ``axes`` that hold at least ``min_foreground`` voxels of ``c``. The task is
    ``<dataset>/<axis>/<c>`` (``<dataset>/2d/<c>`` for 2D items; an item's ``task`` key replaces ``<dataset>``).
    Slices are resized to ``size x size`` and normalised per slice (``intensity``: the bundle's choice, default
    min-max; :func:`image_normaliser`).

    Args:
        items: datalist items with absolute paths.
        dataset: dataset name used in the task names.
        size: output size.
        axes: axes of 3D volumes to slice along.
        min_foreground: slices with fewer foreground voxels are skipped.
        min_images: tasks with fewer images are dropped (an episode needs a query and a support).
        slice_step: keep every ``slice_step``-th slice.
        intensity: the per-slice intensity normalisation (the bundle's ``intensity`` value).
    """
    normalise = image_normaliser(intensity)
    pools: dict[str, dict[str, list]] = defaultdict(lambda: {"images": [], "labels": [], "subjects": []})
    for idx, item in enumerate(items):
        image, label = _load(str(item["image"])), np.rint(_load(str(item["label"]))).astype(np.int64)
        if image.shape != label.shape:
            raise InputDataError(f"{item['label']}: label shape {list(label.shape)} differs from image {list(image.shape)}")
        prefix = str(item.get("task", dataset))
        subject = str(item.get("subject", idx))
        for c in (int(v) for v in np.unique(label) if v > 0):
            binary = label == c
            views = [("2d", [(image, binary)])] if image.ndim == 2 else [
                (str(ax), [(np.take(image, i, ax), np.take(binary, i, ax)) for i in range(0, image.shape[ax], slice_step)])
                for ax in axes
            ]
            for axis_name, slices in views:
                name = f"{prefix}/{axis_name}/{c}"
                for img, lab in slices:
                    if lab.sum() < min_foreground:
                        continue
                    pools[name]["images"].append(normalise(_resize(img, size, 1)))
                    pools[name]["labels"].append((_resize(lab.astype(np.float32), size, 0) > 0.5).astype(np.float32))
                    pools[name]["subjects"].append(subject)
    tasks = [
        ArrayTask(name, np.stack(p["images"]), np.stack(p["labels"]), p["subjects"])
        for name, p in sorted(pools.items())
        if len(p["images"]) >= min_images
    ]
    logger.info("%d task(s) from %d labeled item(s) of %s", len(tasks), len(items), dataset)
    return tasks


def _datalist_tasks(datalist: str, key: str, size: int, axes: Sequence[int], intensity="minmax") -> list[ArrayTask]:
    from .datalist import load_items

    return tasks_from_datalist(load_items(datalist, key), Path(datalist).parent.name, size, axes, intensity=intensity)


def load_tasks(
    synthetic: dict | None = None, datalists: Sequence[str] = (), key: str = "training", size: int = 128,
    axes: Sequence[int] = (0, 1, 2), intensity="minmax",
) -> list:
    """The task list of a training or validation set: synthetic tasks (``synthetic_tasks(**synthetic)``) plus the
    binary tasks of each datalist's ``key`` split (slices normalised as ``intensity`` says)."""
    tasks: list = synthetic_tasks(**{"size": size, **synthetic}) if synthetic else []
    for d in datalists:
        tasks += _datalist_tasks(d, key, size, axes, intensity)
    if not tasks:
        raise InputDataError("no tasks: give synthetic task settings or datalists with labeled items")
    return tasks


# --------------------------------------------------------------------------------------------------
# episodes
# --------------------------------------------------------------------------------------------------


class EpisodicDataset(torch.utils.data.Dataset):
    """Episodes of in-context segmentation: a query and a support set of one task per item.

    Item ``i`` draws a task uniformly over ``tasks`` (or ``tasks[i % len(tasks)]`` with ``cycle_tasks``), then
    ``support_size + 1`` distinct images of it. Each of them goes through ``image_transform`` (in-task
    augmentation, independently per image, on ``{"image", "label"}`` of shape ``(1, H, W)``); then the query and
    the support are stacked as ``{"images", "labels"}`` of shape ``(1 + S, H, W)`` and go through
    ``task_transform`` once, so a spatial or intensity transform there is applied identically to all of them.

    Tasks with fewer than ``S + 1`` images are left out (with a warning).

    Returns dicts ``{"image": (1, H, W), "label": (1, H, W), "support_images": (S, 1, H, W),
    "support_labels": (S, 1, H, W), "task": name}``.

    Args:
        tasks: objects with ``name``, ``len()`` and ``sample(index) -> (image, label)`` (2D arrays).
        support_size: ``S``, or ``(low, high)`` to draw ``S`` per item (the whole batch must share one ``S``:
            use it with batch size 1, or the default collate will fail).
        length: number of items (episodes per epoch).
        image_transform: in-task augmentation (MONAI dict transform).
        task_transform: task augmentation (MONAI dict transform).
        seed: base seed.
        deterministic: item ``i`` is always the same episode (validation); else new episodes each time.
        cycle_tasks: take tasks in turn instead of at random (evaluation: every task equally often).
    """

    def __init__(
        self,
        tasks: Sequence,
        support_size: int | Sequence[int] = 8,
        length: int = 1000,
        image_transform: Callable | None = None,
        task_transform: Callable | None = None,
        seed: int = 0,
        deterministic: bool = False,
        cycle_tasks: bool = False,
    ) -> None:
        if not tasks:
            raise InputDataError("EpisodicDataset needs at least one task")
        self.tasks = list(tasks)
        self.support_size = support_size
        self.length = int(length)
        self.image_transform = image_transform
        self.task_transform = task_transform
        self.seed = int(seed)
        self.deterministic = deterministic
        self.cycle_tasks = cycle_tasks
        s_max = support_size if isinstance(support_size, int) else max(support_size)
        small = [t.name for t in self.tasks if len(t) < s_max + 1]
        if len(small) == len(self.tasks):
            raise InputDataError(
                f"every task has fewer than S + 1 = {s_max + 1} images (e.g. {small[:3]}); lower the support size"
            )
        if small:
            logger.warning("%d task(s) with fewer than S + 1 = %d images left out (e.g. %s)", len(small), s_max + 1,
                           small[:3])
            self.tasks = [t for t in self.tasks if len(t) >= s_max + 1]

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.deterministic:
            return np.random.default_rng([self.seed, int(index)])
        return np.random.default_rng([self.seed, int(index), int(torch.randint(0, 2**31 - 1, (1,)).item())])

    def episode(self, index: int) -> dict:
        rng = self._rng(index)
        task = self.tasks[index % len(self.tasks)] if self.cycle_tasks else self.tasks[int(rng.integers(len(self.tasks)))]
        s = self.support_size if isinstance(self.support_size, int) else int(rng.integers(self.support_size[0], self.support_size[1] + 1))
        picks = rng.choice(len(task), size=s + 1, replace=False)
        images, labels = [], []
        for j in picks:
            img, lab = task.sample(int(j))
            d = {"image": torch.as_tensor(img, dtype=torch.float32)[None], "label": torch.as_tensor(lab, dtype=torch.float32)[None]}
            if self.image_transform is not None:
                d = self.image_transform(d)
            images.append(torch.as_tensor(d["image"]).float())
            labels.append(torch.as_tensor(d["label"]).float())
        ep = {"images": torch.cat(images, 0), "labels": torch.cat(labels, 0)}
        if self.task_transform is not None:
            ep = self.task_transform(ep)
        imgs, labs = torch.as_tensor(ep["images"]).float(), torch.as_tensor(ep["labels"]).float()
        return {
            "image": imgs[:1],
            "label": labs[:1],
            "support_images": imgs[1:, None],
            "support_labels": labs[1:, None],
            "task": task.name,
        }

    def __getitem__(self, index: int) -> dict:
        return self.episode(index)


# --------------------------------------------------------------------------------------------------
# support folders (inference)
# --------------------------------------------------------------------------------------------------


@dataclass
class SupportSet:
    """The labeled pool of inference: ``images`` ``(N, size, size)`` in [0, 1] and integer ``labels`` (same shape),
    with the label values found (``label_values``) and the files read (``names``)."""

    images: np.ndarray
    labels: np.ndarray
    label_values: list[int]
    names: list[str]

    def binary(self, value: int) -> tuple[np.ndarray, np.ndarray]:
        """The images that hold ``value`` and their binary maps (all images when none holds it: an empty task)."""
        maps = (self.labels == value).astype(np.float32)
        keep = maps.reshape(len(maps), -1).any(1)
        if not keep.any():
            keep[:] = True
        return self.images[keep], maps[keep]


def _support_pairs(folder: Path) -> list[tuple[Path, Path]]:
    from .datalist import IMAGE_SUFFIXES

    def stem(p: Path) -> str:
        name = p.name
        for suf in IMAGE_SUFFIXES:
            if name.lower().endswith(suf):
                return name[: -len(suf)]
        return p.stem

    def files(d: Path) -> dict[str, Path]:
        return {stem(p): p for p in sorted(d.iterdir()) if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}

    if (folder / "images").is_dir():
        images = files(folder / "images")
        labels = files(folder / "labels") if (folder / "labels").is_dir() else {}
    else:  # flat folder: <name>.nii.gz with <name>_label.nii.gz
        allf = files(folder)
        labels = {k[: -len("_label")]: v for k, v in allf.items() if k.endswith("_label")}
        images = {k: v for k, v in allf.items() if not k.endswith("_label")}
    if not images:
        raise InputDataError(
            f"{folder}: empty support set (give images/ and labels/ subfolders with the same file names, "
            "or <name>.nii.gz with <name>_label.nii.gz pairs)"
        )
    missing = sorted(k for k in images if k not in labels)
    orphans = sorted(k for k in labels if k not in images)
    problems = [f"support image without label: {images[k]}" for k in missing]
    problems += [f"support label without image: {labels[k]}" for k in orphans]
    if problems:
        raise InputDataError(f"{folder}: " + "; ".join(problems))
    return [(images[k], labels[k]) for k in sorted(images)]


def read_support_folder(
    folder: str | os.PathLike, size: int = 128, axis: int = 2, min_foreground: int = 1, max_slices: int = 64,
    intensity="minmax",
) -> SupportSet:
    """Read the support set of inference: image/label pairs, 2D images or 3D volumes.

    Layout: ``folder/images/<name>`` and ``folder/labels/<name>`` (same names), or a flat folder of ``<name>.<ext>``
    with ``<name>_label.<ext>``. Labels are integer maps; each value ``> 0`` is one label (task) to segment.
    3D volumes give their slices along ``axis`` that hold some foreground (at most ``max_slices``, evenly spaced).
    Every image/slice is resized to ``size`` (images bilinear, labels nearest) and normalised as ``intensity`` says
    (the bundle's ``intensity`` value; default min-max, :func:`image_normaliser`).

    Raises:
        InputDataError: no image (empty support set), an image without label (or the reverse), an image whose shape
            differs from its label's, a label with no foreground at all.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputDataError(f"support folder not found: {folder}")
    normalise = image_normaliser(intensity)
    images, labels, names, problems = [], [], [], []
    for img_path, lab_path in _support_pairs(folder):
        img, lab = _load(str(img_path)), np.rint(_load(str(lab_path))).astype(np.int64)
        if img.shape != lab.shape:
            problems.append(f"{lab_path}: label shape {list(lab.shape)} differs from image {img_path.name} shape {list(img.shape)}")
            continue
        if img.ndim == 2:
            slices = [(img, lab)]
        elif img.ndim == 3:
            idx = [i for i in range(img.shape[axis]) if (np.take(lab, i, axis) > 0).sum() >= min_foreground]
            if len(idx) > max_slices:
                idx = [idx[int(round(k))] for k in np.linspace(0, len(idx) - 1, max_slices)]
            slices = [(np.take(img, i, axis), np.take(lab, i, axis)) for i in idx]
        else:
            problems.append(f"{img_path}: has {img.ndim} dimensions {list(img.shape)}, expected a 2D or 3D image")
            continue
        for k, (im, lb) in enumerate(slices):
            images.append(normalise(_resize(im, size, 1)))
            labels.append(np.rint(_resize(lb.astype(np.float32), size, 0)).astype(np.int64))
            names.append(img_path.name if len(slices) == 1 else f"{img_path.name}[{k}]")
    if problems:
        raise InputDataError(f"{folder}: " + "; ".join(problems))
    if not images:
        raise InputDataError(f"{folder}: empty support set (no labeled image or slice with foreground)")
    lab_arr = np.stack(labels)
    values = sorted(int(v) for v in np.unique(lab_arr) if v > 0)
    if not values:
        raise InputDataError(f"{folder}: the support labels hold no foreground (every label map is 0)")
    return SupportSet(np.stack(images), lab_arr, values, names)


# --------------------------------------------------------------------------------------------------
# the bundle's embedded synthetic dataset
# --------------------------------------------------------------------------------------------------


def generate_fewshot_synthetic(
    dataset_dir: str | os.PathLike,
    num_heldout_tasks: int = 4,
    images_per_task: int = 24,
    num_inference_targets: int = 4,
    num_inference_support: int = 16,
    size: int = 128,
    seed: int = 0,
) -> str:
    """Write the embedded demo dataset: held-out synthetic tasks as 2D NIfTI files with a datalist.

    Layout::

        dataset_dir/dataset.json          {"validation": [...], "test": [...], "families": {...}}
        dataset_dir/tasks/<task>/<k>_image.nii.gz, <k>_label.nii.gz
        dataset_dir/inference/images/     target images of one more held-out task
        dataset_dir/inference/support/images/, support/labels/   its support set
        dataset_dir/inference/reference/  the targets' labels (to check the predictions)

    Items are ``{"image", "label", "task", "subject"}``. All tasks are of the held-out families
    (:data:`HELDOUT_KINDS`); training draws its tasks from the training families on the fly, so nothing here is
    ever seen in training. Half of each task's images are ``validation``, half ``test``.
    """
    tasks = synthetic_tasks(num_heldout_tasks + 1, seed=seed + 1000, kinds="heldout",
                            num_images=images_per_task, size=size)
    with build_dataset_atomically(dataset_dir) as tmp:
        datalist: dict = {"validation": [], "test": [],
                          "families": {"training": list(TRAIN_KINDS), "heldout": list(HELDOUT_KINDS)}}
        for task in tasks[:num_heldout_tasks]:
            folder = task.name.replace("/", "_")
            for k in range(images_per_task):
                img, lab = task.sample(k)
                ip, lp = f"tasks/{folder}/{k:03d}_image.nii.gz", f"tasks/{folder}/{k:03d}_label.nii.gz"
                write_nifti(img, tmp / ip, (1.0, 1.0))
                write_nifti(lab, tmp / lp, (1.0, 1.0), dtype=np.uint8)
                split = "validation" if k % 2 == 0 else "test"
                datalist[split].append({"image": ip, "label": lp, "task": task.name, "subject": f"{folder}_{k:03d}"})
        infer = tasks[num_heldout_tasks]
        for k in range(num_inference_targets + num_inference_support):
            img, lab = infer.sample(k)
            if k < num_inference_targets:
                write_nifti(img, tmp / "inference" / "images" / f"target_{k:03d}.nii.gz", (1.0, 1.0))
                write_nifti(lab, tmp / "inference" / "reference" / f"target_{k:03d}.nii.gz", (1.0, 1.0), dtype=np.uint8)
            else:
                write_nifti(img, tmp / "inference" / "support" / "images" / f"support_{k:03d}.nii.gz", (1.0, 1.0))
                write_nifti(lab, tmp / "inference" / "support" / "labels" / f"support_{k:03d}.nii.gz", (1.0, 1.0),
                            dtype=np.uint8)
        datalist["inference_task"] = infer.name
        write_datalist(tmp / "dataset.json", datalist)
    return str(Path(dataset_dir) / "dataset.json")
