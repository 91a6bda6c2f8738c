"""Intensity normalisation as a choice of every bundle, and the record of the one a model was trained with.

Every bundle has one top-level config key, ``intensity``, that selects how images are normalised before the network,
in training, evaluation and inference alike; its preprocessing has one :class:`IntensityNormalised` line where the
normalisation used to be hard-wired. The value is a plain literal (never code), given in the config or on the
command line (``--intensity percentile``, ``--intensity "{'mode': 'window', 'range': [0, 255]}"``):

- ``window``: clip to a fixed range and scale it to [0, 1] (``ScaleIntensityRange``, ``clip=True``); parameter
  ``range`` ``[lo, hi]`` (LeViT-UNet and VoCo: their ``hu_window`` when the value gives none);
- ``minmax``: per image/volume min-max to [0, 1] (``ScaleIntensity``);
- ``percentile``: clip to the image's percentiles and scale them to [0, 1] (``ScaleIntensityRangePercentiles``,
  ``clip=True``); parameters ``lower`` (0.5) and ``upper`` (99.5);
- ``zscore``: zero mean and unit variance over the nonzero voxels (``NormalizeIntensity(nonzero=True)``);
- ``scale``: divide by a constant, no clipping (``ScaleIntensityRange`` from ``[0, divisor]``); parameter
  ``divisor`` (255: 8-bit images);
- ``none``: nothing (inputs already normalised).

A value is a mode name, a dict ``{"mode": ..., <parameters>}``, or a two-number list (a window range).

Training writes what it used next to the weights: whenever ``models/model.pt`` is (re)written,
:class:`IntensityRecordHandler` writes ``models/model.pt.json`` (atomically, with the sha256 of the weights file it
describes). Inference and evaluation call :func:`check_model_intensity` in their ``initialize``: a model trained with
another normalisation is refused with one line saying which and how to match it, unless ``--intensity_mismatch ok``;
weights without a record (older models, random test weights) or with a record of another file are used with a
warning.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from monai.config import KeysCollection
from monai.transforms import (
    Identity,
    MapTransform,
    NormalizeIntensity,
    ScaleIntensity,
    ScaleIntensityRange,
    ScaleIntensityRangePercentiles,
)

from ..data.validation import InputDataError

__all__ = [
    "MODES",
    "IntensityMismatchError",
    "intensity_spec",
    "describe_intensity",
    "intensity_transform",
    "IntensityNormalised",
    "sidecar_path",
    "write_intensity_record",
    "read_intensity_record",
    "IntensityRecordHandler",
    "check_model_intensity",
]

logger = logging.getLogger(__name__)

# mode -> its parameters and their defaults (None: required)
MODES: dict[str, dict] = {
    "window": {"range": None},
    "minmax": {},
    "percentile": {"lower": 0.5, "upper": 99.5},
    "zscore": {},
    "scale": {"divisor": 255.0},
    "none": {},
}
RECORD_VERSION = 1
MISMATCH_CHOICES = ("refuse", "ok")


class IntensityMismatchError(InputDataError):
    """A model trained with one intensity normalisation, run with another (one line, naming both and the fix)."""


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise InputDataError(f"intensity: {what} must be a finite number, got {value!r}")
    return float(value)


def _range(value, what: str = "window range") -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputDataError(f"intensity: the {what} must be two numbers [low, high], got {value!r}")
    lo, hi = (_number(v, what) for v in value)
    if not lo < hi:
        raise InputDataError(f"intensity: the {what} must have low < high, got {value!r}")
    return [lo, hi]


def intensity_spec(intensity="window", window: Sequence[float] | None = None) -> dict:
    """The complete, checked form of an ``intensity`` value: ``{"mode": ..., <every parameter>}`` (numbers as floats).

    Args:
        intensity: a mode name (``"window"``, ``"minmax"``, ``"percentile"``, ``"zscore"``, ``"scale"``, ``"none"``),
            a dict ``{"mode": ..., <parameters>}``, or a two-number list (a window range). ``None`` means ``"none"``.
        window: the range of mode ``window`` when the value gives none (the ``hu_window`` of LeViT-UNet and VoCo).

    Raises:
        InputDataError: an unknown mode or parameter, a missing window range, a bad number.
    """
    if intensity is None:
        intensity = "none"
    if isinstance(intensity, (list, tuple)):
        intensity = {"mode": "window", "range": list(intensity)}
    if isinstance(intensity, str):
        intensity = {"mode": intensity.strip().lower()}
    if not isinstance(intensity, Mapping):
        raise InputDataError(f"intensity: expected a mode name ({', '.join(MODES)}), a dict with 'mode', or a window "
                             f"[low, high]; got {type(intensity).__name__} {intensity!r}")
    given = dict(intensity)
    mode = str(given.pop("mode", "")).strip().lower()
    if mode not in MODES:
        raise InputDataError(f"intensity: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    unknown = sorted(set(given) - set(MODES[mode]))
    if unknown:
        accepted = ", ".join(MODES[mode]) or "none"
        raise InputDataError(f"intensity: mode {mode!r} takes no parameter {', '.join(map(repr, unknown))} "
                             f"(it takes: {accepted})")
    spec: dict = {"mode": mode}
    if mode == "window":
        value = given.get("range", window)
        if value is None:
            raise InputDataError("intensity: mode 'window' needs a range: --intensity \"{'mode': 'window', 'range': "
                                 "[low, high]}\"")
        spec["range"] = _range(value)
    elif mode == "percentile":
        lower = _number(given.get("lower", MODES[mode]["lower"]), "percentile 'lower'")
        upper = _number(given.get("upper", MODES[mode]["upper"]), "percentile 'upper'")
        if not 0.0 <= lower < upper <= 100.0:
            raise InputDataError(f"intensity: percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        spec.update(lower=lower, upper=upper)
    elif mode == "scale":
        divisor = _number(given.get("divisor", MODES[mode]["divisor"]), "scale 'divisor'")
        if divisor <= 0:
            raise InputDataError(f"intensity: scale 'divisor' must be positive, got {divisor}")
        spec["divisor"] = divisor
    return spec


def describe_intensity(spec: Mapping) -> str:
    """A spec as the literal that selects it on the command line (``percentile``, ``{'mode': 'window', ...}``)."""
    spec = dict(spec)
    if len(spec) == 1:
        return str(spec["mode"])

    def num(v):
        return int(v) if float(v).is_integer() else v

    parts = [f"'mode': '{spec.pop('mode')}'"]
    for key, value in spec.items():
        parts.append(f"'{key}': {[num(v) for v in value] if isinstance(value, list) else num(value)}")
    return "{" + ", ".join(parts) + "}"


def intensity_transform(intensity="window", window: Sequence[float] | None = None, channel_wise: bool = False):
    """The MONAI array transform of an ``intensity`` value (see :func:`intensity_spec`).

    ``channel_wise``: min-max, percentiles and z-score statistics per channel rather than over the whole image.
    """
    spec = intensity_spec(intensity, window)  # a complete spec gives itself
    mode = spec["mode"]
    if mode == "window":
        lo, hi = spec["range"]
        return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)
    if mode == "minmax":
        return ScaleIntensity(minv=0.0, maxv=1.0, channel_wise=channel_wise)
    if mode == "percentile":
        return ScaleIntensityRangePercentiles(lower=spec["lower"], upper=spec["upper"], b_min=0.0, b_max=1.0,
                                              clip=True, channel_wise=channel_wise)
    if mode == "zscore":
        return NormalizeIntensity(nonzero=True, channel_wise=channel_wise)
    if mode == "scale":
        return ScaleIntensityRange(a_min=0.0, a_max=spec["divisor"], b_min=0.0, b_max=1.0, clip=False)
    return Identity()


class IntensityNormalised(MapTransform):
    """Normalise the intensities of ``keys`` as the bundle's ``intensity`` config value says.

    One line in a bundle's preprocessing, where its normalisation used to be hard-wired::

        {"_target_": "custom_components.transforms.IntensityNormalised", "keys": "image", "mode": "@intensity",
         "window": "@hu_window"}

    It builds the MONAI transform of the chosen mode (:func:`intensity_transform`: ``ScaleIntensityRange``,
    ``ScaleIntensity``, ``ScaleIntensityRangePercentiles``, ``NormalizeIntensity(nonzero=True)``) and applies it to
    each key; with the bundle's default mode the numbers are those of the transform it replaces.

    Args:
        keys: keys of the images to normalise.
        mode: the ``intensity`` value (mode name, dict with ``mode`` and parameters, or a window ``[lo, hi]``).
        window: the range of mode ``window`` when ``mode`` gives none.
        channel_wise: statistics per channel (e.g. a stack of support images, one per channel).
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(self, keys: KeysCollection, mode="window", window: Sequence[float] | None = None,
                 channel_wise: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spec = intensity_spec(mode, window)
        self.transform = intensity_transform(self.spec, channel_wise=channel_wise)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# -------------------------------------------------------------------------------------------------------------------
# the record next to the weights
# -------------------------------------------------------------------------------------------------------------------


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``<model>.json`` next to the weights (``models/model.pt`` -> ``models/model.pt.json``)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


_HASHES: dict[tuple, str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES.clear()  # one entry: the weights of this process
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def write_intensity_record(model_path: str | os.PathLike, intensity="window",
                           window: Sequence[float] | None = None) -> Path:
    """Write ``<model>.json`` (atomically: :func:`custom_components.data.synthetic.io.atomic_write`) recording the
    normalisation ``model_path`` was trained with and the sha256 of that file. Returns the record's path."""
    from ..data.synthetic.io import atomic_write

    model_path = Path(model_path)
    record = {
        "intensity": intensity_spec(intensity, window),
        "model_file": model_path.name,
        "model_sha256": _sha256(model_path),
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "record_version": RECORD_VERSION,
    }
    text = json.dumps(record, indent=2) + "\n"
    path = sidecar_path(model_path)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def read_intensity_record(model_path: str | os.PathLike) -> dict | None:
    """The record next to ``model_path`` (``None`` when there is none).

    Raises:
        InputDataError: a record that cannot be read or does not hold a valid normalisation.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["intensity"] = intensity_spec(record["intensity"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputDataError(f"{path}: not a readable intensity record ({type(e).__name__}: {e}); delete it to use "
                             "the weights without a check") from None
    return record


class IntensityRecordHandler:
    """Ignite handler: whenever the weights file ``model_path`` is (re)written, write its intensity record.

    Put it after the checkpoint saver that writes ``model_path`` in the same handler list (ignite runs handlers of
    one event in the order they were attached); it checks on ``EPOCH_COMPLETED`` and ``COMPLETED`` of its engine
    whether the file changed (inode, size, modification time) since it was built or last recorded. Only rank 0 writes.

    Args:
        model_path: the weights file (e.g. ``models/model.pt``).
        intensity, window: the run's ``intensity`` value and default window (as :class:`IntensityNormalised`).
    """

    def __init__(self, model_path: str | os.PathLike, intensity="window",
                 window: Sequence[float] | None = None) -> None:
        self.model_path = Path(model_path)
        self.spec = intensity_spec(intensity, window)
        self._seen = self._signature()

    def _signature(self) -> tuple | None:
        try:
            st = self.model_path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> None:
        import ignite.distributed as idist

        if idist.get_rank() != 0:
            return
        signature = self._signature()
        if signature is None or signature == self._seen:
            return
        path = write_intensity_record(self.model_path, self.spec)
        self._seen = signature
        logger.info("intensity record %s: %s", path, describe_intensity(self.spec))


def check_model_intensity(model_path: str | os.PathLike, intensity="window", window: Sequence[float] | None = None,
                          mismatch: str = "refuse") -> dict | None:
    """Refuse to run weights trained with another intensity normalisation than this run's.

    Args:
        model_path: the weights the workflow loads.
        intensity, window: this run's ``intensity`` value and default window.
        mismatch: ``"refuse"`` (default) or ``"ok"`` (run anyway, with a warning).

    Returns:
        the recorded normalisation, or ``None`` when there is no usable record (a warning is logged).

    Raises:
        IntensityMismatchError: the record names another normalisation and ``mismatch`` is ``"refuse"``.
        InputDataError: a bad ``intensity`` or ``mismatch`` value, an unreadable record.
    """
    if mismatch not in MISMATCH_CHOICES:
        raise InputDataError(f"intensity_mismatch: {mismatch!r} is not one of {', '.join(MISMATCH_CHOICES)}")
    spec = intensity_spec(intensity, window)
    model_path = Path(model_path)
    record = read_intensity_record(model_path)
    if record is None:
        logger.warning("%s: no intensity record (%s) next to the weights (an older model, or not trained by this "
                       "bundle): assuming it was trained with this run's normalisation, %s", model_path,
                       sidecar_path(model_path).name, describe_intensity(spec))
        return None
    if model_path.is_file() and record.get("model_sha256") != _sha256(model_path):
        logger.warning("%s: its intensity record %s describes another file (sha256 differs): not checked; this run "
                       "normalises with %s", model_path, sidecar_path(model_path).name, describe_intensity(spec))
        return None
    trained = record["intensity"]
    if not _same(trained, spec):
        message = (f"{model_path}: trained with intensity normalisation {describe_intensity(trained)} (its "
                   f"{sidecar_path(model_path).name}), but this run normalises with {describe_intensity(spec)}; run "
                   f"with --intensity \"{describe_intensity(trained)}\" to match, or --intensity_mismatch ok to run "
                   "anyway")
        if mismatch == "refuse":
            raise IntensityMismatchError(message)
        logger.warning("%s (running anyway: intensity_mismatch ok)", message)
    return trained


def _same(a: Mapping, b: Mapping) -> bool:
    if a.keys() != b.keys() or a["mode"] != b["mode"]:
        return False
    for key in a:
        if key == "mode":
            continue
        x, y = a[key], b[key]
        xs, ys = (x, y) if isinstance(x, list) else ([x], [y])
        if len(xs) != len(ys) or any(not math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-9) for u, v in zip(xs, ys)):
            return False
    return True
