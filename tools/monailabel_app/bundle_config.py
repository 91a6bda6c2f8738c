"""How a MONAI Label request becomes a run of one of this collection's bundles (no MONAI Label import here).

The MONAI Label app in ``main.py`` serves each bundle folder placed under its model folder. A request may set only
the parameters its bundle declares, once, in the ``"monailabel"`` section of its ``configs/metadata.json``:

- ``infer_params`` / ``train_params``: request key -> description; each names a top-level key of the bundle's
  inference / train config holding a plain value (``text``/``text_mode`` of LViT, ``max_epochs`` of a training run);
- ``named_paths``: request key -> ``{"config_key", "folder"[, "file"]}``: a request gives a *name*, and the server
  looks it up among the subfolders of ``<bundle>/<folder>`` (its own list, set up by whoever runs the server), e.g.
  UniverSeg's ``support_set`` -> ``support_dir`` = ``<bundle>/support_sets/<name>``.

Everything else a request names that is a key of the bundle's config is refused with a message listing what may be
set; paths never come from a request (a declared key that names a path is refused too), and no value may be code
(``$``, ``@``, ``%``: :func:`custom_components.utils.refuse_expression`). Keys that are neither (MONAI Label's own
entries: ``model``, ``image``, ``device``, ...) are left to MONAI Label. Nothing here knows a bundle by name. The
functions are plain so that they can be tested without a MONAI Label install.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from custom_components.utils import refuse_expression

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
# entries MONAI Label itself puts in a request (some share a name with a config key, e.g. ``device``): never overrides
MONAILABEL_KEYS = frozenset(
    {
        "model", "image", "label", "session", "description", "save_label", "logging", "device", "output",
        "result_extension", "result_dtype", "result_compress", "client_id", "bundle_path", "gpus", "run_id",
        "multi_gpu", "name", "method", "images", "annotations",
    }
)
# a config key that holds a file or folder: never set from a request
_PATH_KEY = re.compile(r"(^|_)(dir|dirs|path|paths|file|files|folder|root|ckpt|input|output|datalist)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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


def is_path_key(key: str) -> bool:
    """A config key that names a file or folder (``support_dir``, ``text_cache_dir``, ``ckpt_path``, ``text_file``,
    ``input``, ...): a request never sets one."""
    return bool(_PATH_KEY.search(key))


def request_params(bundle: str | os.PathLike, task: str) -> dict[str, str]:
    """The request keys the bundle declares for ``task`` (``"infer"`` or ``"train"``): key -> description."""
    params = monailabel_section(bundle).get(f"{task}_params", {})
    return {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}


def named_paths(bundle: str | os.PathLike) -> dict[str, dict]:
    """The bundle's named-path request keys with this server's choices: key -> ``{"config_key", "choices": {name:
    path}}``; the names are the subfolders of ``<bundle>/<folder>`` (holding ``file`` when the declaration gives one).
    """
    out = {}
    for key, spec in (monailabel_section(bundle).get("named_paths") or {}).items():
        folder = Path(bundle) / str(spec["folder"])
        choices = {}
        if folder.is_dir():
            for sub in sorted(folder.iterdir()):
                target = sub / spec["file"] if spec.get("file") else sub
                if sub.is_dir() and _NAME.match(sub.name) and target.exists():
                    choices[sub.name] = str(target.resolve())
        out[str(key)] = {"config_key": str(spec["config_key"]), "folder": str(folder), "choices": choices}
    return out


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


def check_declaration(config: Mapping[str, Any], allowed: Iterable[str], named: Mapping[str, Mapping] | None = None,
                      source: str = "bundle") -> None:
    """A bundle's declared request keys are usable: each names a top-level key of ``config`` holding a plain value
    and no path; each named path names a config key.

    Raises:
        ValueError: naming the bad declaration.
    """
    named = named or {}
    for key in allowed:
        if key in named:
            if named[key]["config_key"] not in config:
                raise ValueError(f"{source}: named path '{key}' sets '{named[key]['config_key']}', not a config key")
            continue
        if key not in config or not is_overridable(key, config[key]):
            raise ValueError(f"{source}: request parameter '{key}' is not a plain top-level key of the config")
        if is_path_key(key) or key in MONAILABEL_KEYS:
            raise ValueError(f"{source}: request parameter '{key}' names a path or a MONAI Label entry; a request "
                             "never sets one (declare it under named_paths: a server-side list of names)")


def request_overrides(config: Mapping[str, Any], request: Mapping[str, Any], allowed: Iterable[str],
                      named: Mapping[str, Mapping] | None = None, own_keys: Iterable[str] = ()) -> dict:
    """The request's parameters as config overrides: only the bundle's declared keys, only plain values.

    Args:
        config: the merged top-level config keys of the workflow.
        request: the MONAI Label request.
        allowed: the request keys the bundle declares (:func:`request_params`).
        named: the bundle's named paths (:func:`named_paths`; those among ``allowed`` apply): the request gives one
            of ``choices``' names and the override sets ``config_key`` to its path.
        own_keys: request keys the calling task handles itself (``quick``, ``dataset`` of a train task).

    Returns:
        config key -> value. A ``None`` or empty-string value means "keep the bundle's default". Entries that are
        MONAI Label's own, or that name no key of ``config``, are left out.

    Raises:
        ValueError: the request sets a config key the bundle does not declare (a path key included), a name that is
            not among the server's choices, a nested value, or a value starting with ``$``, ``@`` or ``%``.
    """
    allowed, own = set(allowed), set(own_keys)
    named = {k: v for k, v in (named or {}).items() if k in allowed}  # the named paths of this task
    accepted = sorted(allowed)
    overrides = {}
    for key, value in request.items():
        if key in own or key in MONAILABEL_KEYS:
            continue
        if key not in allowed:
            if key in config or any(n["config_key"] == key for n in named.values()):
                why = "it names a path, which a request never sets" if is_path_key(key) else "it is not declared"
                raise ValueError(f"request parameter '{key}' cannot be set by a request ({why}); this bundle "
                                 f"accepts: {', '.join(accepted) or 'none'}")
            continue  # not a key of this bundle: MONAI Label's or a client's own entry
        if value is None or value == "":
            continue
        if key in named:
            choices = named[key]["choices"]
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"request parameter '{key}': {value!r} is not one of this server's names "
                                 f"({', '.join(choices) or 'none set up'}; folders under {named[key]['folder']})")
            overrides[named[key]["config_key"]] = choices[value]
            continue
        if is_path_key(key):  # a declaration that slipped through check_declaration
            raise ValueError(f"request parameter '{key}' names a path, which a request never sets")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (dict, list)):
                raise ValueError(f"request parameter '{key}': nested values are not accepted ({v!r})")
        try:
            refuse_expression(key, value)
        except ValueError as e:
            raise ValueError(f"request parameter '{key}': config expressions and references are not accepted "
                             f"({value!r}); give a plain value (text starting with $, @ or %: not by a request)") from e
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
