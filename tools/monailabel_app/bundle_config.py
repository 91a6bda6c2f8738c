"""How a MONAI Label request becomes a run of one of this collection's bundles (no MONAI Label import here).

The MONAI Label app in ``main.py`` serves each bundle folder placed under its model folder. A request's parameters
are mapped onto the bundle's own top-level config keys (``support_dir`` of UniverSeg, ``text``/``text_mode`` of
LViT, ``max_epochs`` of a training run, ...), so nothing here knows a bundle by name: what a bundle exposes is
what its configs declare. The functions are plain so that they can be tested without a MONAI Label install.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# keys that the app sets itself or that hold structure (networks, transforms, engines): never taken from a request
RESERVED_KEYS = frozenset(
    {
        "imports", "bundle_root", "input", "output_dir", "datalist", "data_list_key", "ckpt_dir", "ckpt_path",
        "dataset_dir", "datalist_file", "device", "network", "network_def", "preprocessing", "postprocessing",
        "inferer", "handlers", "evaluator", "dataset", "dataloader", "initialize", "run", "finalize", "training",
        "train", "validate", "synthetic_data", "log_dir",
    }
)
# what a bundle may declare in its metadata.json (optional): {"monailabel": {...}}
METADATA_SECTION = "monailabel"


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def config_files(bundle: str | os.PathLike, name: str, quick: bool) -> list[str]:
    """``configs/<name>.json`` of ``bundle``, followed by the flat ``configs/quick.json`` overlay when ``quick``.

    Raises:
        FileNotFoundError: the bundle has no ``configs/<name>.json``.
    """
    configs = Path(bundle) / "configs"
    main = configs / f"{name}.json"
    if not main.is_file():
        raise FileNotFoundError(f"{bundle}: no configs/{name}.json (not a bundle of this collection?)")
    files = [str(main)]
    if quick and (configs / "quick.json").is_file():
        files.append(str(configs / "quick.json"))
    return files


def top_level_config(files: Sequence[str | os.PathLike]) -> dict:
    """The merged top-level keys of flat config files (later files win, as ``ConfigParser.read_config`` does)."""
    merged: dict = {}
    for f in files:
        merged.update(read_json(f))
    return merged


def monailabel_section(bundle: str | os.PathLike) -> dict:
    """The bundle's optional ``"monailabel"`` section of ``configs/metadata.json`` ({} when absent)."""
    meta = read_json(Path(bundle) / "configs" / "metadata.json")
    section = meta.get(METADATA_SECTION, {})
    return section if isinstance(section, dict) else {}


def label_map(bundle: str | os.PathLike) -> dict[int, str]:
    """Label value -> name of the label maps the bundle writes.

    From ``network_data_format.outputs.pred`` of the metadata: a multi-channel output is an argmax over classes, so
    the keys of its ``channel_def`` are the label values; a one-channel output is a thresholded foreground logit, so
    the label map is binary (0 background, 1 the channel's structure). The metadata's ``monailabel.labels`` (value ->
    name), when present, is taken as it is (for a bundle whose label map is neither).
    """
    meta = read_json(Path(bundle) / "configs" / "metadata.json")
    labels = meta.get(METADATA_SECTION, {}).get("labels")
    if labels:
        return {int(k): str(v) for k, v in labels.items()}
    pred = next(iter(meta["network_data_format"]["outputs"].values()))
    channels = pred.get("channel_def", {})
    if len(channels) == 1:
        return {0: "background", 1: str(next(iter(channels.values())))}
    return {int(k): str(v) for k, v in channels.items()}


def is_overridable(key: str, value: Any) -> bool:
    """A top-level config key that a request may set: not reserved, and a plain value (or an expression giving one)
    rather than a structure of components."""
    if key in RESERVED_KEYS or key.startswith("_"):
        return False
    if isinstance(value, dict):
        return False
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) for v in value)
    return True


def overridable_keys(config: Mapping[str, Any]) -> list[str]:
    return sorted(k for k, v in config.items() if is_overridable(k, v))


def request_overrides(config: Mapping[str, Any], request: Mapping[str, Any]) -> dict:
    """The request's parameters that name an overridable top-level key of ``config``, as config overrides.

    Other request entries (MONAI Label's own: ``model``, ``image``, ``device``, ``result_extension``, ...) are
    ignored. A ``None`` or empty-string value means "keep the bundle's default".

    Raises:
        ValueError: a value is a string starting with ``$``, ``@`` or ``%`` (a config expression or reference: a
            request may give values, never code), or a nested structure.
    """
    overrides = {}
    for key, value in request.items():
        if key not in config or not is_overridable(key, config[key]) or value is None or value == "":
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (dict, list)):
                raise ValueError(f"request parameter '{key}': nested values are not accepted ({v!r})")
            if isinstance(v, str) and v[:1] in ("$", "@", "%"):
                raise ValueError(
                    f"request parameter '{key}': config expressions and references are not accepted ({v!r}); "
                    "give a plain value"
                )
        overrides[key] = value
    return overrides


def find_prediction(output_dir: str | os.PathLike) -> str:
    """The single label file a bundle's ``SaveImaged`` wrote into ``output_dir``.

    Raises:
        RuntimeError: no file, or more than one.
    """
    found = sorted(p for p in Path(output_dir).rglob("*") if p.is_file() and not p.name.startswith("."))
    if len(found) != 1:
        names = [str(p.relative_to(output_dir)) for p in found]
        raise RuntimeError(f"expected one prediction in {output_dir}, found {len(found)}: {names}")
    return str(found[0])


def datastore_datalist(
    items: Sequence[Mapping[str, str]], validation_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """A ``{"training": [...], "validation": [...]}`` datalist from MONAI Label's labeled images.

    Raises:
        ValueError: fewer than two labeled images (one is needed for each split).
    """
    items = [{"image": str(i["image"]), "label": str(i["label"])} for i in items if i.get("label")]
    if len(items) < 2:
        raise ValueError(
            f"training on the datastore needs at least 2 labeled images (found {len(items)}): save final labels "
            "first, or train with dataset='bundle' (the bundle's own dataset_dir)"
        )
    items.sort(key=lambda i: i["image"])
    random.Random(seed).shuffle(items)
    n_val = max(1, round(len(items) * validation_fraction))
    return {"training": items[n_val:], "validation": items[:n_val]}
