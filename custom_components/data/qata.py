"""QaTa-COV19-style data for LViT: converter of the published layout, synthetic chest X-rays with report sentences,
labeled/unlabeled splits, the LV-loss template bank, and the text of inference inputs.

Published layout (Li et al., LViT, IEEE TMI 2023; QaTa-COV19, MosMedData+, MoNuSeg)::

    <root>/{Train_Folder, Val_Folder, Test_Folder}/{img, labelcol}/...
    <root>/<Split>_Folder/<Split>_text.xlsx   (columns Image | Description; Image = the MASK file name)

The official QaTa code reads one ``Train_Folder/Train_Val_text.xlsx`` for train and validation; every
``*text*.xlsx``/``*text*.csv`` file found in ``root`` or a split folder is read, so both arrangements work. QaTa mask
names are ``mask_<image name>``; MoNuSeg masks are the image name with a ``.png`` extension; both are looked up.
:func:`convert_qata` writes the datalist (``training``, ``validation``, ``test`` items ``{image, label, text}``) into a
folder of the user's choice (the source may be read-only) from any subset of the split folders. MoNuSeg as shipped
(Train_Folder 24 + Val_Folder 6 images, no test folder)::

    python -m custom_components.data convert_qata --root ../shared/data/monuseg --dataset_dir /tmp/monuseg \
        --val_images 4 --val_folder_split test     # 20 train / 4 validation (seeded, listed) / 6 test
The ``.xlsx`` files are read with ``openpyxl`` (no pandas needed); a CSV export works as well.

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
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

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
    "missing_dataset",
    "generate_qata_synthetic",
    "generate_lv_bank",
    "load_lv_bank",
    "split_random_fraction",
    "labeled_items",
    "unlabeled_items",
    "attach_text",
    "read_text_file",
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
    """Rows of the first worksheet of an ``.xlsx`` file as cell text (``""`` for empty cells), empty rows skipped."""
    from openpyxl import load_workbook  # only needed for .xlsx; CSV works without it

    try:
        wb = load_workbook(path, data_only=True)  # data_only: the cached value of a formula, not the formula
    except KeyError as e:  # a zip archive without the parts of a workbook
        raise ValueError(f"{path}: not an .xlsx workbook ({e})") from e
    try:
        sheet = wb.worksheets[0]
        rows = [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        wb.close()
    return [r for r in rows if any(r)]


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
    root: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_images: int | str | Sequence[str] | None = None,
    val_folder_split: str = "validation",
) -> str:
    """Write the datalist of a dataset in the published LViT layout (any of its split folders).

    Args:
        root: the folder holding any of ``Train_Folder``, ``Val_Folder`` and ``Test_Folder`` (each with ``img/`` and
            ``labelcol/``); a missing split folder is skipped (logged), at least one must be there. Nothing is
            written into ``root`` unless it is also ``dataset_dir``; it may be read-only.
        dataset_dir: where ``dataset.json`` goes (default ``root``, the QaTa behaviour). Paths in it are relative to
            it for files inside it, absolute otherwise (a datalist next to read-only source data).
        val_fraction: with no validation split otherwise (no ``Val_Folder``, or it became ``test``, and no
            ``val_images``), this fraction of ``Train_Folder`` (seeded shuffle) becomes the validation split
            (QaTa: 1429 of 7145 = 0.2); 0 keeps them all for training.
        seed: of that shuffle (and of ``val_images`` given as a count).
        val_images: validation images taken from ``Train_Folder``: a count (seeded shuffle of the sorted file
            names; MoNuSeg: 4 of 24) or image file names (or stems), e.g. ``"a.png,b.png"``; used instead of
            ``val_fraction``, so a ``Val_Folder`` must go to ``test`` (``val_folder_split="test"``).
        val_folder_split: the split ``Val_Folder`` fills: ``"validation"`` (default) or ``"test"`` (MoNuSeg as
            distributed without its test folder: the official validation images become the held-out test set).

    Whenever a split is derived (validation taken from ``Train_Folder``, ``Val_Folder`` used as ``test``) the datalist
    also holds ``"split_info"``: where each split came from, the seed and the validation image names.

    Returns:
        the datalist path.

    Raises:
        InputDataError: no split folder, a split folder without ``img/``, an image without a mask, a mask without a
            description (all listed), an unknown ``val_images`` name, an ambiguous split request, or an unwritable
            ``dataset_dir``.
    """
    if val_folder_split not in ("validation", "test"):
        raise ValueError(f"val_folder_split must be 'validation' or 'test', got {val_folder_split!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = Path(root).expanduser().resolve()
    out_dir = Path(dataset_dir).expanduser().resolve() if dataset_dir else root
    if not root.is_dir():
        raise InputDataError(f"{root}: dataset folder not found")
    present = [(f, s) for f, s in _SPLITS if (root / f).is_dir()]
    if not present:
        raise InputDataError(f"{root}: none of {', '.join(f for f, _ in _SPLITS)} found; not the published LViT layout "
                             f"(<root>/<Split>_Folder/{{img,labelcol}} and <Split>_text.xlsx)")
    folders = {f for f, _ in present}
    for f, _ in _SPLITS:
        if f not in folders:
            logger.info(f"{root}: no {f}, skipped")
    if val_folder_split == "test" and {"Val_Folder", "Test_Folder"} <= folders:
        raise InputDataError(f"{root}: has both Val_Folder and Test_Folder; val_folder_split='test' would merge them "
                             f"(leave it 'validation')")
    if val_images is not None and "Val_Folder" in folders and val_folder_split == "validation":
        raise InputDataError(f"{root}: val_images takes validation images from Train_Folder, but Val_Folder is the "
                             f"validation split too; set val_folder_split='test' (or drop val_images)")
    found: dict[str, dict[str, str]] = {}
    for folder in [root] + [root / f for f, _ in _SPLITS]:
        found[folder.name] = {}
        if folder.is_dir():
            for f in _description_files(folder):
                found[folder.name].update(read_descriptions(f))

    def ref(p: Path) -> str:
        return os.path.relpath(p, out_dir) if out_dir in p.parents else str(p)

    problems: list[str] = []
    datalist: dict[str, list] = {"training": [], "validation": [], "test": []}
    names: dict[str, list[str]] = {"training": []}  # image file names of Train_Folder, in datalist order
    for folder, split in present:
        if folder == "Val_Folder":
            split = val_folder_split
        img_dir, lab_dir = root / folder / "img", root / folder / "labelcol"
        # the split's own files first; validation also reads Train_Folder's (official Train_Val_text.xlsx); then root
        descriptions = {**found[root.name], **(found["Train_Folder"] if folder == "Val_Folder" else {}),
                        **found[folder]}
        if not img_dir.is_dir():
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
            datalist[split].append({"image": ref(img), "label": ref(mask), "text": text})
            if folder == "Train_Folder":
                names["training"].append(img.name)
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputDataError(f"{root}: {len(problems)} problem(s); no datalist written:\n  " + "\n  ".join(problems[:20]) + more)
    split_info: dict = {}
    if "Val_Folder" in folders and val_folder_split == "test":
        split_info["test"] = {"from": "Val_Folder"}
    train_names = names["training"]
    chosen: list[int] | None = None
    if val_images is not None:
        if isinstance(val_images, str) and not val_images.strip().isdigit():
            val_images = [v.strip() for v in val_images.split(",") if v.strip()]
        if isinstance(val_images, (int, str)):
            n_val = int(val_images)
            if not 0 < n_val < len(train_names):
                raise InputDataError(f"{root}: val_images={n_val} of {len(train_names)} Train_Folder images: "
                                     f"give 1..{len(train_names) - 1}")
            chosen = sorted(np.random.default_rng(seed).permutation(len(train_names))[:n_val].tolist())
            how = {"count": n_val, "seed": seed}
        else:
            index = {Path(n).stem: i for i, n in enumerate(train_names)}
            index.update({n: i for i, n in enumerate(train_names)})
            unknown = [str(v) for v in val_images if str(v) not in index]
            if unknown:
                raise InputDataError(f"{root}: val_images not in Train_Folder/img: {', '.join(unknown)}")
            chosen = sorted({index[str(v)] for v in val_images})
            if not chosen or len(chosen) == len(train_names):
                raise InputDataError(f"{root}: val_images must name some, not all, Train_Folder images")
            how = {"listed": True}
    elif not datalist["validation"] and datalist["training"] and float(val_fraction) > 0:
        order = np.random.default_rng(seed).permutation(len(train_names))
        n_val = int(round(float(val_fraction) * len(order)))
        chosen = sorted(order[:n_val].tolist())
        how = {"fraction": float(val_fraction), "seed": seed}
    if chosen is not None:
        picked = set(chosen)
        datalist["validation"] = [it for i, it in enumerate(datalist["training"]) if i in picked]
        datalist["training"] = [it for i, it in enumerate(datalist["training"]) if i not in picked]
        split_info["validation"] = {"from": "Train_Folder", **how, "images": [train_names[i] for i in chosen]}
    if split_info:
        split_info["training"] = {"from": "Train_Folder"}
        datalist["split_info"] = split_info  # type: ignore[assignment]
    if out_dir.exists() and not (out_dir.is_dir() and os.access(out_dir, os.W_OK)):
        raise InputDataError(f"{out_dir}: cannot write the datalist there (read-only or not a folder); "
                             f"give an output folder with --dataset_dir")
    path = write_datalist(out_dir / DATALIST_NAME, datalist)
    logger.info(f"{path}: " + ", ".join(f"{k} {len(v)}" for k, v in datalist.items() if isinstance(v, list)))
    return path


def missing_dataset(dataset_dir: str | os.PathLike, name: str = "the dataset", command: str = "") -> None:
    """A ``synthetic_data`` generator for configs of real data only: stops with how to convert the data instead of
    generating the synthetic demo dataset into an empty ``dataset_dir``.

    Raises:
        InputDataError: always.
    """
    hint = f": {command}" if command else ""
    raise InputDataError(f"{dataset_dir}: no dataset.json; this config trains on {name}, which has no synthetic "
                         f"stand-in. Convert it first and pass the output folder as --dataset_dir{hint}")


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
def split_random_fraction(
    datalist: str | os.PathLike, labeled_fraction: float = 1.0, seed: int = 0
) -> tuple[list, list]:
    """``(labeled, unlabeled)`` training items: a seeded ``labeled_fraction`` (1/4, 1/2, 1) of ``training`` keeps its
    labels, the rest loses them (their text is kept). Unlabeled items get a ``uid`` (their image path relative to the
    datalist, so a moved dataset still matches its stored pseudo labels), the key of the stored pseudo label."""
    items = load_items(datalist, "training")
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    n_lab = max(1, int(round(labeled_fraction * len(items))))
    # not monai.data.partition_dataset: its shuffle picks other items for a seed (changing existing splits)
    order = np.random.default_rng(seed).permutation(len(items))
    chosen = set(order[:n_lab].tolist())
    labeled = [it for i, it in enumerate(items) if i in chosen]
    root = Path(datalist).resolve().parent
    unlabeled = [{**{k: v for k, v in it.items() if k != "label"}, "uid": os.path.relpath(str(it["image"]), root)}
                 for i, it in enumerate(items) if i not in chosen]
    return labeled, unlabeled


def labeled_items(datalist: str | os.PathLike, labeled_fraction: float = 1.0, seed: int = 0) -> list[dict]:
    """The labeled part of :func:`split_random_fraction`."""
    return split_random_fraction(datalist, labeled_fraction, seed)[0]


def unlabeled_items(datalist: str | os.PathLike, labeled_fraction: float = 1.0, seed: int = 0) -> list[dict]:
    """The unlabeled part of :func:`split_random_fraction` (no labels, with text and ``uid``)."""
    return split_random_fraction(datalist, labeled_fraction, seed)[1]


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


def read_text_file(path: str | os.PathLike) -> str:
    """The sentence in a UTF-8 text file (surrounding white space removed; line breaks become spaces).

    A sentence that starts with ``$``, ``@`` or ``%`` cannot be given on the command line (MONAI's config parser
    would evaluate it), so it is given in a file (``--text_file``); the file's text is never evaluated.

    Raises:
        InputDataError: the file is missing, unreadable or empty.
    """
    try:
        text = " ".join(Path(path).read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError) as e:
        raise InputDataError(f"{path}: text file unreadable ({type(e).__name__}: {e})") from e
    if not text:
        raise InputDataError(f"{path}: text file is empty")
    return text


def attach_text(items: list[dict], text: str | None = None, text_mode: str = "required",
                source: str = "input", text_file: str | os.PathLike | None = None) -> list[dict]:
    """Give every inference item its sentence, or stop with an error naming each image that has none.

    Args:
        items: datalist items (``image``; maybe ``text``).
        text: one sentence for every item (overrides theirs); ``None``: the item's ``text``, else the QaTa-style
            description file next to the image (``*text*.xlsx``/``.csv`` in its folder, parent or grand-parent,
            keyed by the mask name ``mask_<image name>`` or the image name).
        text_mode: ``"required"`` (LViT needs text, as in the paper) or ``"none"`` (explicit no-text mode: the text
            path of the network is skipped and any text is dropped).
        source: the input's name, for messages.
        text_file: a UTF-8 file holding the one sentence for every item (:func:`read_text_file`), instead of ``text``.

    Raises:
        InputDataError: in ``"required"`` mode, listing each image without text; an unreadable ``text_file``.
        ValueError: both ``text`` and ``text_file`` are given.
    """
    if text_mode not in ("required", "none"):
        raise ValueError(f"text_mode must be 'required' or 'none', got {text_mode!r}")
    if text_file:
        if text is not None and str(text).strip():
            raise ValueError("give the sentence either as text or as text_file, not both")
        text = read_text_file(text_file)
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
            if hasattr(x, "meta") and x.meta.get("original_channel_dim") not in (None, 0):
                # the file's channels (RGB(A) last) are this transform's now; a prediction inverted onto this image
                # (one channel) must be saved as a channel-first map, not looked for channels in its last axis
                x.meta["original_channel_dim"] = float("nan")
            d[key] = x
        return d
