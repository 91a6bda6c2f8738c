"""Intensity normalisation as a choice of every bundle (``intensity``), and the record of the one a model was trained
with (``models/model.pt.json``), checked before inference.

- the transform (:class:`custom_components.transforms.IntensityNormalised`): values, defaults equal to the MONAI
  transforms the bundles used before, clear errors;
- per bundle, through its own preprocessing as ``inference.json`` + ``quick.json`` build it (UniverSeg: its
  inferer, where it normalises each slice): two synthetic images whose intensities differ by a factor of 2.5 have the
  same tissue intensity distribution after percentile (and z-score) normalisation, and not after a fixed window;
- the record: written by the training handler whenever ``model.pt`` changes, checked by inference (refused with one
  line, accepted with ``--intensity_mismatch ok``, a warning without a record or with a record of another file);
- a MONAI Label request can set neither ``intensity`` nor ``intensity_mismatch``;
- end to end (slow): a LeViT-UNet training run writes the record; inference with another normalisation stops with one
  line naming both, and runs with ``--intensity_mismatch ok``.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import REPO, bundle_names, check_run, copy_bundle, run_bundle

from custom_components.data.validation import InputDataError
from custom_components.transforms import (
    IntensityMismatchError,
    IntensityNormalised,
    IntensityRecordHandler,
    check_model_intensity,
    intensity_spec,
    write_intensity_record,
)
from custom_components.transforms.intensity import describe_intensity, read_intensity_record, sidecar_path

BUNDLES = bundle_names()
FACTOR = 2.5
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


# ---------------------------------------------------------------------------------------------------------------
# the transform


@pytest.mark.parametrize("value, window, expected", [
    ("window", [-125, 275], {"mode": "window", "range": [-125.0, 275.0]}),
    ([0, 255], None, {"mode": "window", "range": [0.0, 255.0]}),
    ({"mode": "window", "range": [0, 255]}, [-125, 275], {"mode": "window", "range": [0.0, 255.0]}),
    ("percentile", None, {"mode": "percentile", "lower": 0.5, "upper": 99.5}),
    ({"mode": "percentile", "lower": 1, "upper": 99}, None, {"mode": "percentile", "lower": 1.0, "upper": 99.0}),
    ("MinMax", None, {"mode": "minmax"}),
    ("zscore", [0, 1], {"mode": "zscore"}),
    ("scale", None, {"mode": "scale", "divisor": 255.0}),
    (None, None, {"mode": "none"}),
])
def test_spec_forms(value, window, expected):
    spec = intensity_spec(value, window)
    assert spec == expected
    assert intensity_spec(spec) == spec  # a complete spec gives itself
    assert intensity_spec(ast.literal_eval(describe_intensity(spec)) if spec.keys() - {"mode"} else
                          describe_intensity(spec)) == spec  # the printed literal selects it again


@pytest.mark.parametrize("value, match", [
    ("window", "needs a range"),
    ("sigmoid", "unknown mode"),
    ({"mode": "percentile", "lowr": 1}, "takes no parameter 'lowr'"),
    ({"mode": "percentile", "lower": 99, "upper": 1}, "lower < upper"),
    ({"mode": "window", "range": [10, 0]}, "low < high"),
    ({"mode": "window", "range": [0, float("nan")]}, "finite"),
    ({"mode": "scale", "divisor": 0}, "positive"),
    (3, "expected a mode name"),
])
def test_spec_errors(value, match):
    with pytest.raises(InputDataError, match=match):
        intensity_spec(value)


def test_defaults_equal_the_transforms_they_replace():
    from monai.transforms import ScaleIntensityd, ScaleIntensityRanged

    x = torch.randn(1, 16, 16, 4) * 300 + 40
    old = ScaleIntensityRanged("image", a_min=-125, a_max=275, b_min=0.0, b_max=1.0, clip=True)({"image": x.clone()})
    new = IntensityNormalised("image", "window", window=[-125, 275])({"image": x.clone()})
    assert torch.equal(torch.as_tensor(old["image"]), torch.as_tensor(new["image"]))
    for channel_wise in (False, True):
        y = torch.rand(3, 8, 8) * torch.tensor([1.0, 5.0, 9.0])[:, None, None]
        old = ScaleIntensityd("image", minv=0.0, maxv=1.0, channel_wise=channel_wise)({"image": y.clone()})
        new = IntensityNormalised("image", "minmax", channel_wise=channel_wise)({"image": y.clone()})
        assert torch.equal(torch.as_tensor(old["image"]), torch.as_tensor(new["image"]))


def test_modes_values():
    x = torch.zeros(1, 20, 20)
    x[0, 5:15, 5:15] = torch.linspace(10, 200, 100).reshape(10, 10)
    run = lambda mode: torch.as_tensor(IntensityNormalised("image", mode)({"image": x.clone()})["image"])  # noqa: E731
    assert float(run("minmax").min()) == 0.0 and float(run("minmax").max()) == 1.0
    assert torch.allclose(run("scale"), x / 255)
    assert torch.equal(run("none"), x)
    z = run("zscore")
    fg = x != 0
    assert torch.all(z[~fg] == 0) and abs(float(z[fg].mean())) < 1e-5
    assert abs(float(z[fg].std(unbiased=False)) - 1) < 1e-4
    w = run({"mode": "window", "range": [0, 100]})
    assert float(w.max()) == 1.0 and float(w.min()) == 0.0
    p = run({"mode": "percentile", "lower": 10, "upper": 90})
    assert float(p.min()) == 0.0 and float(p.max()) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# every bundle's own preprocessing: a 2.5x brighter scan


def _phantom(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Background 0 and a textured 'tissue' region around 100 (two structures), and its mask."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids[:2])
    tissue = r2 < 0.7 ** 2
    image = np.zeros(shape, np.float32)
    values = 80.0 + 15.0 * rng.standard_normal(shape)
    values[r2 < 0.3 ** 2] += 40.0  # a brighter organ inside
    image[tissue] = np.clip(values[tissue], 20, 160)
    return image.astype(np.float32), tissue


def _write(image: np.ndarray, path: Path, spacing=(1.5, 1.5, 2.5)) -> str:
    affine = np.diag(list(spacing[: image.ndim]) + [1.0] * (4 - image.ndim))
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return str(path)


def _parser(name: str, bundle: Path, intensity):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(bundle / "configs" / "quick.json")])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["intensity"] = intensity  # as --intensity <literal> sets it
    if "text_encoder" in parser:
        parser["text_encoder"] = "hash"  # LViT: no text model needed to build its preprocessing
    return parser


def _universeg_preprocess(parser, bundle: Path, tmp_path: Path, paths: list[str]) -> list[np.ndarray]:
    """UniverSeg normalises in its inferer, per slice, as it does its support images: the query a network receives."""
    support = tmp_path / "support"
    (support / "images").mkdir(parents=True)
    (support / "labels").mkdir()
    for k in range(2):
        img, mask = _phantom((64, 64), seed=10 + k)
        _write(img, support / "images" / f"s{k}.nii.gz")
        _write(mask.astype(np.float32), support / "labels" / f"s{k}.nii.gz")
    parser["support_dir"] = str(support)
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    seen = []

    def network(query, support_images, support_labels):
        seen.append(query.detach().clone())
        return torch.zeros_like(query)

    out = []
    for path in paths:
        seen.clear()
        inferer(preprocessing({"image": path})["image"][None], network)
        out.append(torch.cat(seen).numpy())
    return out


@pytest.mark.parametrize("name", BUNDLES)
def test_brighter_scan_matches_after_percentile_not_after_window(name, tmp_path):
    from custom_components.transforms import CheckImaged

    bundle = copy_bundle(name, tmp_path)
    check = [t for t in _parser(name, bundle, "none").get_parsed_content("preprocessing").transforms
             if isinstance(t, CheckImaged)][0]  # the input the bundle takes: a 2D image or a volume
    spatial = check.spatial_dims if isinstance(check.spatial_dims, int) else min(check.spatial_dims)
    shape = (64, 64) if spatial == 2 else (64, 64, 16)
    image, _ = _phantom(shape)
    paths = [_write(image, tmp_path / "scan.nii.gz"), _write(FACTOR * image, tmp_path / "brighter.nii.gz")]

    def preprocess(intensity) -> list[np.ndarray]:
        parser = _parser(name, bundle, intensity)
        if name.startswith("universeg"):
            return _universeg_preprocess(parser, bundle, tmp_path / str(len(list(tmp_path.iterdir()))), paths)
        preprocessing = parser.get_parsed_content("preprocessing")
        return [np.asarray(preprocessing({"image": p})["image"], dtype=np.float64) for p in paths]

    def tissue_quantiles(intensity) -> tuple[np.ndarray, np.ndarray]:
        a, b = preprocess(intensity)
        assert a.shape == b.shape
        tissue = a > a.min() + 1e-3  # the tissue of the first scan (same geometry in both)
        assert tissue.mean() > 0.2, f"{name}: tissue mask too small ({tissue.mean():.2f})"
        return np.quantile(a[tissue], QUANTILES), np.quantile(b[tissue], QUANTILES)

    qa, qb = tissue_quantiles("percentile")
    spread = qa[-1] - qa[0]
    np.testing.assert_allclose(qa, qb, atol=0.02 * spread, err_msg=f"{name}: percentile normalisation")
    qa, qb = tissue_quantiles("zscore")
    np.testing.assert_allclose(qa, qb, atol=0.02 * (qa[-1] - qa[0]), err_msg=f"{name}: z-score normalisation")
    qa, qb = tissue_quantiles({"mode": "window", "range": [0, 255]})
    assert np.all(qb - qa > 0.2 * (qa[-1] - qa[0])), f"{name}: a fixed window keeps the 2.5x difference: {qa} {qb}"
    assert abs(np.median(qb) / np.median(qa) - FACTOR) < 0.5 or name.startswith("universeg"), (qa, qb)


@pytest.mark.parametrize("name", BUNDLES)
def test_default_is_declared_and_reaches_every_preprocessing(name):
    """One ``intensity`` key in inference.json and train.json with the same default; each config that normalises has
    an IntensityNormalised line reading it; inference and evaluation check the record, training writes it."""
    configs = REPO / "bundles" / name / "configs"
    inference = json.loads((configs / "inference.json").read_text())
    train = json.loads((configs / "train.json").read_text())
    assert inference["intensity"] == train["intensity"], name
    assert inference["intensity_mismatch"] == "refuse"
    intensity_spec(inference["intensity"], inference.get("hu_window"))
    text = {p.name: p.read_text() for p in configs.glob("*.json")}
    assert "IntensityRecordHandler" in text["train.json"]
    for f in ("inference.json", "evaluate.json"):
        assert "check_model_intensity(@ckpt_path, @intensity" in text[f], (name, f)
    for f, t in text.items():
        assert '"ScaleIntensityRanged"' not in t and '"ScaleIntensityd"' not in t, (name, f)
        if "IntensityNormalised" in t:
            assert t.count('"mode": "@intensity"') == t.count("IntensityNormalised"), (name, f)


# ---------------------------------------------------------------------------------------------------------------
# the record and its check


def _weights(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.randn(4, generator=torch.Generator().manual_seed(seed))}, path)
    return path


def test_record_then_check(tmp_path, caplog):
    model = _weights(tmp_path / "models" / "model.pt")
    record = write_intensity_record(model, "window", [-125, 275])
    assert record == sidecar_path(model) == tmp_path / "models" / "model.pt.json"
    assert read_intensity_record(model)["intensity"] == {"mode": "window", "range": [-125.0, 275.0]}
    assert check_model_intensity(model, "window", [-125, 275]) == {"mode": "window", "range": [-125.0, 275.0]}
    assert check_model_intensity(model, {"mode": "window", "range": [-125.0, 275.0000001]})
    with pytest.raises(IntensityMismatchError) as e:
        check_model_intensity(model, "percentile", [-125, 275])
    message = str(e.value)
    assert "\n" not in message and "model.pt" in message and "--intensity_mismatch ok" in message
    assert "{'mode': 'window', 'range': [-125, 275]}" in message and "'mode': 'percentile'" in message
    with pytest.raises(IntensityMismatchError):
        check_model_intensity(model, "window", [0, 255])
    with caplog.at_level(logging.WARNING):
        assert check_model_intensity(model, "percentile", mismatch="ok")
    assert "running anyway" in caplog.text
    with pytest.raises(InputDataError, match="intensity_mismatch"):
        check_model_intensity(model, "percentile", mismatch="yes")


def test_check_without_record_or_with_record_of_another_file_warns(tmp_path, caplog):
    model = _weights(tmp_path / "model.pt")
    with caplog.at_level(logging.WARNING):
        assert check_model_intensity(model, "percentile") is None
    assert "no intensity record" in caplog.text
    write_intensity_record(model, "minmax")
    _weights(model, seed=1)  # other weights copied over, the old record left beside them
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert check_model_intensity(model, "percentile") is None
    assert "describes another file" in caplog.text
    sidecar_path(model).write_text("{not json")
    with pytest.raises(InputDataError, match="not a readable intensity record"):
        check_model_intensity(model, "percentile")


def test_record_handler_writes_whenever_the_weights_change(tmp_path):
    from ignite.engine import Engine, Events

    model = tmp_path / "models" / "model.pt"
    _weights(model, seed=5)  # weights of an earlier run: not described by this one
    engine = Engine(lambda e, b: None)
    saves = {2: 1, 3: 2}  # epoch -> seed of the weights saved then (epoch 1: none)

    @engine.on(Events.EPOCH_COMPLETED)
    def save(e):  # stands for the checkpoint saver, attached before the handler
        if e.state.epoch in saves:
            _weights(model, seed=saves[e.state.epoch])

    records = []
    handler = IntensityRecordHandler(model, "percentile")
    handler.attach(engine)

    @engine.on(Events.EPOCH_COMPLETED)
    def look(e):
        records.append(sidecar_path(model).read_text() if sidecar_path(model).exists() else None)

    engine.run([0], max_epochs=4)
    assert records[0] is None  # nothing saved yet: the earlier weights are not described
    assert records[1] is not None and records[2] != records[1] and records[3] == records[2]
    assert check_model_intensity(model, "percentile") == {"mode": "percentile", "lower": 0.5, "upper": 99.5}


# ---------------------------------------------------------------------------------------------------------------
# never from a MONAI Label request


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("key, value", [("intensity", "percentile"), ("intensity_mismatch", "ok"),
                                        ("hu_window", [0, 255])])
def test_monailabel_request_cannot_set_intensity(name, key, value):
    sys.path.insert(0, str(REPO / "tools" / "monailabel_app"))
    import bundle_config as bc

    bundle = REPO / "bundles" / name
    for task in ("infer", "train"):
        declared = bc.request_params(bundle, task)
        assert key not in declared, f"{name}: {key} must not be on the {task} allow-list"
        config_file = "inference" if task == "infer" else "train"
        top = bc.top_level_config(bc.config_files(bundle, config_file, quick=True))
        if key not in top:
            continue
        with pytest.raises(ValueError, match="cannot be set by a request"):
            bc.request_overrides(top, {key: value}, declared, bc.named_paths(bundle))


# ---------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_training_records_and_inference_refuses_another_normalisation(tmp_path):
    name = "levit_unet_synapse_segmentation"
    bundle = copy_bundle(name, tmp_path)
    cfg = bundle / "configs"
    check_run(run_bundle([cfg / "train.json", cfg / "quick.json"], "--max_epochs", "1", "--epoch_length", "2",
                         "--val_interval", "1", "--num_workers", "0", cwd=bundle, run_id="training"))
    model = bundle / "models" / "model.pt"
    assert read_intensity_record(model)["intensity"] == {"mode": "window", "range": [-125.0, 275.0]}
    infer = [cfg / "inference.json", cfg / "quick.json"]
    proc = run_bundle(infer, "--intensity", "percentile", "--num_workers", "0", "--data_list_key", "validation",
                      cwd=bundle)
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("InputDataError: ") and "--intensity_mismatch ok" in last, last
    assert not (bundle / "eval" / "predictions").exists()
    out = check_run(run_bundle(infer, "--intensity", "percentile", "--intensity_mismatch", "ok", "--num_workers", "0",
                               "--data_list_key", "validation", cwd=bundle))
    assert "running anyway" in out
    assert list((bundle / "eval" / "predictions").glob("*_seg.nii.gz"))
    check_run(run_bundle(infer, "--intensity", "{'mode': 'window', 'range': [-125, 275]}", "--num_workers", "0",
                         "--data_list_key", "validation", "--output_dir", str(tmp_path / "matched"), cwd=bundle))
