"""QaTa-COV19-style data for LViT: converter of the published layout, synthetic chest X-rays with report sentences,
labeled/unlabeled splits, the LV-loss template bank, and the text of inference inputs.

Published layout (Li et al., LViT, IEEE TMI 2023; QaTa-COV19, MosMedData+, MoNuSeg)::

    <root>/{Train_Folder, Val_Folder, Test_Folder}/{img, labelcol}/...
    <root>/<Split>_Folder/<Split>_text.xlsx   (columns Image | Description; Image = the MASK file name)

The official QaTa code reads one ``Train_Folder/Train_Val_text.xlsx`` for train and validation; every
``*text*.xlsx``/``*text*.csv`` file found in ``root`` or a split folder is read, so both arrangements work. QaTa mask
names are ``mask_<image name>``; MoNuSeg masks are the image name with a ``.png`` extension; both are looked up.
:func:`convert_qata` writes the datalist (``training``, ``validation``, ``test`` items ``{image, label, text}``).
The ``.xlsx`` files are read with the standard library (no pandas needed); a CSV export works as well.

Synthetic default (:func:`generate_qata_synthetic`): chest-X-ray-like images
(:class:`~custom_components.data.synthetic.chest.ChestXRayPhantom`) with 0-4 infected areas in named lung zones and
a sentence generated from the mask in the QaTa style (:func:`describe_zones`), written in the published layout
and converted by :func:`convert_qata`, plus the LV-loss template bank (:func:`generate_lv_bank`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import torch
from monai.transforms import MapTransform

from .datalist import DATALIST_NAME, load_items
from .synthetic.chest import LUNG_ZONES, ChestXRayPhantom
from .synthetic.io import build_dataset_atomically, write_datalist, write_png
from .validation import InputDataError

__all__ = [
    "describe_zones",
    "read_descriptions",
    "convert_qata",
    "generate_qata_synthetic",
    "generate_lv_bank",
    "load_lv_bank",
    "split_labeled",
    "labeled_items",
    "unlabeled_items",
    "attach_text",
    "EnsureChannelsd",
]

logger = logging.getLogger(__name__)

_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
_SPLITS = (("Train_Folder", "training"), ("Val_Folder", "validation"), ("Test_Folder", "test"))
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ------------------------------------------------------------------------------------------------
# report sentences
# ------------------------------------------------------------------------------------------------
def describe_zones(zones: Sequence[tuple[str, str]]) -> str:
    """A QaTa-style sentence describing infected zones ``(height, side)``.

    Example: ``[("upper", "left"), ("lower", "right")]`` ->
    ``"Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."``
    """
    zones = sorted(set(zones), key=lambda z: (("left", "right").index(z[1]), ("upper", "middle", "lower").index(z[0])))
    if not zones:
        return "No pulmonary infection, no infected area."
    sides = {s for _, s in zones}
    kind = "Bilateral" if len(sides) == 2 else "Unilateral"
    n = len(zones)
    count = f"{_NUMBERS[n] if n < len(_NUMBERS) else n} infected area{'s' if n > 1 else ''}"
    names = [f"{h} {s} lung" for h, s in zones]
    where = names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{kind} pulmonary infection, {count}, {where}."


# ------------------------------------------------------------------------------------------------
# description files
# ------------------------------------------------------------------------------------------------
def _xlsx_rows(path: Path) -> list[list[str]]:
    """Rows of the first worksheet of an ``.xlsx`` file (cell text; shared and inline strings, numbers)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        shared: list[str] = []
        if "xl/sharedStrings.xml" in z.namelist():
            root = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t")) for si in root.findall("m:si", ns)]
        sheets = sorted(n for n in z.namelist() if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
        if not sheets:
            raise ValueError(f"{path}: no worksheet")
        root = ElementTree.fromstring(z.read(sheets[0]))
    rows = []
    for row in root.iter(f"{{{ns['m']}}}row"):
        cells: dict[int, str] = {}
        for c in row.findall("m:c", ns):
            ref = c.get("r", "")
            col = 0
            for ch in re.match(r"[A-Z]*", ref).group(0):
                col = col * 26 + ord(ch) - 64
            col = max(col - 1, len(cells)) if ref else len(cells)
            kind, v = c.get("t"), c.find("m:v", ns)
            if kind == "s" and v is not None:
                text = shared[int(v.text)]
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{{{ns['m']}}}t"))
            else:
                text = v.text if v is not None and v.text is not None else ""
            cells[col] = text
        if cells:
            rows.append([cells.get(i, "") for i in range(max(cells) + 1)])
    return rows


def read_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """``{mask file name: description}`` from an ``.xlsx`` or ``.csv`` file with columns ``Image`` and
    ``Description`` (header names are matched case-insensitively).

    Raises:
        ValueError: the file lacks one of the two columns.
    """
    path = Path(path)
    if path.suffix.lower() == ".xlsx":
        rows = _xlsx_rows(path)
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f)]
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    if "image" not in header or "description" not in header:
        raise ValueError(f"{path}: needs the columns 'Image' and 'Description', found {rows[0]}")
    i, j = header.index("image"), header.index("description")
    out = {}
    for r in rows[1:]:
        if len(r) > max(i, j) and r[i].strip():
            out[r[i].strip()] = r[j].strip()
    return out


def _description_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.is_file() and "text" in p.name.lower()
                  and p.suffix.lower() in (".xlsx", ".csv") and not p.name.startswith((".", "~")))


def _mask_names(image_name: str) -> list[str]:
    """Candidate mask/description keys of an image file name (QaTa ``mask_<name>``, MoNuSeg ``<stem>.png``)."""
    stem = Path(image_name).stem
    return [f"mask_{image_name}", image_name, f"{stem}.png", f"mask_{stem}.png"]


def _find_mask(labelcol: Path, image_name: str) -> Path | None:
    for name in _mask_names(image_name):
        if (labelcol / name).is_file():
            return labelcol / name
    return None


def _lookup(descriptions: Mapping[str, str], names: Iterable[str]) -> str | None:
    for name in names:
        if name in descriptions and descriptions[name].strip():
            return descriptions[name]
    return None


# ------------------------------------------------------------------------------------------------
# converter
# ------------------------------------------------------------------------------------------------
def convert_qata(
    root: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, val_fraction: float = 0.2, seed: int = 0
) -> str:
    """Write the datalist of a dataset in the published LViT layout.

    Args:
        root: the folder holding ``Train_Folder``, ``Test_Folder`` and (optionally) ``Val_Folder``.
        dataset_dir: where ``dataset.json`` goes (default ``root``); paths in it are relative to it when possible.
        val_fraction: with no ``Val_Folder``, this fraction of ``Train_Folder`` (seeded shuffle) becomes the
            validation split (QaTa: 1429 of 7145 = 0.2).
        seed: of that shuffle.

    Returns:
        the datalist path.

    Raises:
        InputDataError: a split folder is missing, an image has no mask, or a mask has no description (all listed).
    """
    root = Path(root).expanduser().resolve()
    out_dir = Path(dataset_dir).expanduser().resolve() if dataset_dir else root
    found: dict[str, dict[str, str]] = {}
    for folder in [root] + [root / f for f, _ in _SPLITS]:
        found[folder.name] = {}
        if folder.is_dir():
            for f in _description_files(folder):
                found[folder.name].update(read_descriptions(f))
    problems: list[str] = []
    datalist: dict[str, list] = {"training": [], "validation": [], "test": []}
    for folder, split in _SPLITS:
        img_dir, lab_dir = root / folder / "img", root / folder / "labelcol"
        # the split's own files first; validation also reads Train_Folder's (official Train_Val_text.xlsx); then root
        descriptions = {**found[root.name], **(found["Train_Folder"] if folder == "Val_Folder" else {}),
                        **found[folder]}
        if not img_dir.is_dir():
            if folder != "Val_Folder":
                problems.append(f"{img_dir}: folder not found")
            continue
        for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            mask = _find_mask(lab_dir, img.name)
            if mask is None:
                problems.append(f"{img}: no mask in {lab_dir} (looked for {', '.join(_mask_names(img.name))})")
                continue
            text = _lookup(descriptions, [mask.name] + _mask_names(img.name))
            if text is None:
                problems.append(f"{mask}: no description row (Image = {mask.name}) in the *text*.xlsx/csv files")
                continue
            rel = (lambda p: os.path.relpath(p, out_dir))
            datalist[split].append({"image": rel(img), "label": rel(mask), "text": text})
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputDataError(f"{root}: {len(problems)} problem(s); no datalist written:\n  " + "\n  ".join(problems[:20]) + more)
    if not datalist["validation"] and datalist["training"]:
        order = np.random.default_rng(seed).permutation(len(datalist["training"]))
        n_val = int(round(val_fraction * len(order)))
        val = set(order[:n_val].tolist())
        datalist["validation"] = [it for i, it in enumerate(datalist["training"]) if i in val]
        datalist["training"] = [it for i, it in enumerate(datalist["training"]) if i not in val]
    path = write_datalist(out_dir / DATALIST_NAME, datalist)
    logger.info(f"{path}: " + ", ".join(f"{k} {len(v)}" for k, v in datalist.items()))
    return path


# ------------------------------------------------------------------------------------------------
# LV-loss template bank
# ------------------------------------------------------------------------------------------------
def _template_mask(size: int, zones: Sequence[tuple[str, str]]) -> np.ndarray:
    """A template: one ellipse per zone on the mean lung geometry of :class:`ChestXRayPhantom` (white on black)."""
    yy, xx = np.meshgrid((np.arange(size) + 0.5) / size * 2 - 1, (np.arange(size) + 0.5) / size * 2 - 1, indexing="ij")
    mask = np.zeros((size, size), bool)
    top, bottom = -0.63, 0.5  # mean lung rows (above the diaphragm)
    third = (bottom - top) / 3.0
    for height, side in zones:
        i = ("upper", "middle", "lower").index(height)
        cy = top + (i + 0.5) * third
        cx = -0.42 if side == "right" else 0.42
        mask |= ((yy - cy) / (0.45 * third * 1.3)) ** 2 + ((xx - cx) / 0.13) ** 2 <= 1.0
    return mask


def generate_lv_bank(folder: str | os.PathLike, size: int = 224, max_zones: int = 2) -> str:
    """Write the contrastive-label (LV-loss) bank of the synthetic task: one template per set of 1..``max_zones``
    zones (6 + 15 = 21 with the default), ``fig<k>.png`` + ``bank.json`` (``{"templates": [{"mask", "text"}]}``).

    Returns:
        the path of ``bank.json``.
    """
    from itertools import combinations

    folder = Path(folder)
    templates = []
    for k in range(1, max_zones + 1):
        for zones in combinations(LUNG_ZONES, k):
            name = f"fig{len(templates) + 1}.png"
            write_png(_template_mask(size, zones), folder / name)
            templates.append({"mask": name, "text": describe_zones(zones)})
    return write_datalist(folder / "bank.json", {"templates": templates})


def load_lv_bank(path: str | os.PathLike, cache=None) -> dict:
    """Read a template bank: ``bank.json`` (:func:`generate_lv_bank`) or the official ``LV_loss.xlsx``/``.csv``
    (columns ``Image``, ``Description``; the images next to it; greyscale-averaged, scaled to ``[0, 1]``).

    Args:
        path: the bank file.
        cache: a :class:`~custom_components.data.text_embedding.TextEmbeddingCache`; when given, the sentence
            embeddings of the templates are added.

    Returns:
        ``{"masks": float tensor [K, 1, H, W] in [0, 1], "texts": [K str], "embeddings": [K, D] (with a cache)}``.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LV-loss template bank not found: {path}")
    if path.suffix.lower() == ".json":
        entries = [(t["mask"], t["text"]) for t in json.loads(path.read_text())["templates"]]
    else:
        entries = list(read_descriptions(path).items())
    if not entries:
        raise ValueError(f"{path}: the template bank is empty")
    masks, texts = [], []
    shape = None
    for name, text in entries:
        img = Image.open(path.parent / name).convert("L")
        shape = shape or img.size
        arr = np.asarray(img.resize(shape, Image.BILINEAR), np.float32) / 255.0
        masks.append(torch.from_numpy(arr)[None])
        texts.append(text)
    bank = {"masks": torch.stack(masks), "texts": texts}
    if cache is not None:
        cache.precompute(texts)
        bank["embeddings"] = torch.stack([cache.get(t)[1] for t in texts])
    return bank


# ------------------------------------------------------------------------------------------------
# synthetic dataset
# ------------------------------------------------------------------------------------------------
def generate_qata_synthetic(
    dataset_dir: str | os.PathLike,
    num_training: int = 40,
    num_validation: int = 8,
    num_test: int = 16,
    size: int = 224,
    max_lesions: int = 4,
    seed: int = 0,
    max_decoys: int = 0,
) -> str:
    """Synthetic QaTa-COV19-like dataset in the published layout (PNG images/masks, ``<Split>_text.csv``), its
    datalist (:func:`convert_qata`) and the LV-loss template bank (``lv_bank/bank.json``). Returns the datalist.

    Each image has 0..``max_lesions`` infected areas in distinct named zones; its sentence names their number and
    zones (:func:`describe_zones`), so the text carries information about the mask. ``max_decoys > 0`` adds
    lesion-like opacities outside the mask in zones the sentence does not name (a task where only the text tells
    infection from decoy; see :class:`~custom_components.data.synthetic.chest.ChestXRayPhantom`).
    """
    phantom = ChestXRayPhantom(size=size, max_lesions=max_lesions, max_decoys=max_decoys)
    rng = np.random.default_rng(seed)
    with build_dataset_atomically(dataset_dir) as tmp:
        for (folder, _), n in zip(_SPLITS, (num_training, num_validation, num_test)):
            rows = [["Image", "Description"]]
            for i in range(n):
                image, mask, zones = phantom(rng)
                name = f"synthetic_cxr_{folder[:-7].lower()}_{i:04d}.png"
                write_png(image, tmp / folder / "img" / name)
                write_png(mask.astype(bool), tmp / folder / "labelcol" / f"mask_{name}")
                rows.append([f"mask_{name}", describe_zones(zones)])
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            with open(tmp / folder / f"{folder[:-7]}_text.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(rows)
        generate_lv_bank(tmp / "lv_bank", size=size)
        convert_qata(tmp)
    return str(Path(dataset_dir) / DATALIST_NAME)


# ------------------------------------------------------------------------------------------------
# labeled / unlabeled splits
# ------------------------------------------------------------------------------------------------
def split_labeled(datalist: str | os.PathLike, labeled_fraction: float = 1.0, seed: int = 0) -> tuple[list, list]:
    """``(labeled, unlabeled)`` training items: a seeded ``labeled_fraction`` (1/4, 1/2, 1) of ``training`` keeps its
    labels, the rest loses them (their text is kept). Unlabeled items get a ``uid`` (their image path relative to the
    datalist, so a moved dataset still matches its stored pseudo labels), the key of the stored pseudo label."""
    items = load_items(datalist, "training")
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    n_lab = max(1, int(round(labeled_fraction * len(items))))
    order = np.random.default_rng(seed).permutation(len(items))
    chosen = set(order[:n_lab].tolist())
    labeled = [it for i, it in enumerate(items) if i in chosen]
    root = Path(datalist).resolve().parent
    unlabeled = [{**{k: v for k, v in it.items() if k != "label"}, "uid": os.path.relpath(str(it["image"]), root)}
                 for i, it in enumerate(items) if i not in chosen]
    return labeled, unlabeled


def labeled_items(datalist: str | os.PathLike, labeled_fraction: float = 1.0, seed: int = 0) -> list[dict]:
    """The labeled part of :func:`split_labeled`."""
    return split_labeled(datalist, labeled_fraction, seed)[0]


def unlabeled_items(datalist: str | os.PathLike, labeled_fraction: float = 1.0, seed: int = 0) -> list[dict]:
    """The unlabeled part of :func:`split_labeled` (no labels, with text and ``uid``)."""
    return split_labeled(datalist, labeled_fraction, seed)[1]


# ------------------------------------------------------------------------------------------------
# inference text
# ------------------------------------------------------------------------------------------------
def _nearby_descriptions(image: Path, memo: dict) -> dict[str, str]:
    """Descriptions in the image's folder, its parent and grand-parent (``<Split>_Folder/img/<name>``)."""
    out: dict[str, str] = {}
    for folder in (image.parent, image.parent.parent, image.parent.parent.parent):
        if folder not in memo:
            found: dict[str, str] = {}
            if folder.is_dir():
                for f in _description_files(folder):
                    try:
                        found.update(read_descriptions(f))
                    except (ValueError, OSError, zipfile.BadZipFile) as e:
                        logger.warning(f"{f}: not a description file ({e})")
            memo[folder] = found
        out = {**memo[folder], **out}
    return out


def attach_text(items: list[dict], text: str | None = None, text_mode: str = "required",
                source: str = "input") -> list[dict]:
    """Give every inference item its sentence, or stop with an error naming each image that has none.

    Args:
        items: datalist items (``image``; maybe ``text``).
        text: one sentence for every item (overrides theirs); ``None``: the item's ``text``, else the QaTa-style
            description file next to the image (``*text*.xlsx``/``.csv`` in its folder, parent or grand-parent,
            keyed by the mask name ``mask_<image name>`` or the image name).
        text_mode: ``"required"`` (LViT needs text, as in the paper) or ``"none"`` (explicit no-text mode: the text
            path of the network is skipped and any text is dropped).
        source: the input's name, for messages.

    Raises:
        InputDataError: in ``"required"`` mode, listing each image without text.
    """
    if text_mode not in ("required", "none"):
        raise ValueError(f"text_mode must be 'required' or 'none', got {text_mode!r}")
    if text_mode == "none":
        return [{k: v for k, v in it.items() if k != "text"} for it in items]
    out, missing, memo = [], [], {}
    for it in items:
        it = dict(it)
        if text is not None and str(text).strip():
            it["text"] = str(text)
        elif not str(it.get("text") or "").strip():
            image = Path(str(it.get("image", "")))
            found = _lookup(_nearby_descriptions(image, memo), _mask_names(image.name)) if image.name else None
            if found is None:
                missing.append(str(image))
            else:
                it["text"] = found
        out.append(it)
    if missing:
        shown = "\n  ".join(f"{m}: no text (no 'text' in the datalist item, no description row next to it)"
                            for m in missing[:20])
        raise InputDataError(
            f"{source}: {len(missing)} image(s) without text; LViT needs a sentence per image. Give it with "
            f"--text '<sentence>', a 'text' key in the datalist, or a *text*.xlsx/csv file next to the images; or "
            f"run without text with --text_mode none. Nothing was written:\n  {shown}"
        )
    return out


# ------------------------------------------------------------------------------------------------
# image channels
# ------------------------------------------------------------------------------------------------
class EnsureChannelsd(MapTransform):
    """Make channel-first images have ``channels`` channels: grey is repeated (the official code reads QaTa's grey
    PNGs as 3-channel BGR), an alpha channel is dropped, a trailing singleton spatial axis (2D DICOM) is squeezed."""

    def __init__(self, keys, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim == 4 and x.shape[-1] == 1:
                x = x[..., 0]
                if hasattr(x, "meta"):  # a MetaTensor (e.g. a one-image DICOM series): saved back as 2D, not (1, H, W)
                    x.meta["spatial_shape"] = np.asarray(x.shape[1:])
            if x.shape[0] == 4:  # RGBA
                x = x[:3]
            if x.shape[0] == 1 and self.channels > 1:
                x = x.repeat(self.channels, *([1] * (x.ndim - 1)))
            elif x.shape[0] == 3 and self.channels == 1:
                x = x.mean(0, keepdim=True)
            if x.shape[0] != self.channels:
                raise ValueError(f"{key}: cannot make {self.channels} channels from shape {list(x.shape)}")
            d[key] = x
        return d
