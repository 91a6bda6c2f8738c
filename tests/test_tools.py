"""Tests of tools/check_bundle.py and tools/package_bundles.py on a tiny fake bundle in tmp_path."""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

import check_bundle as cb  # noqa: E402
import package_bundles as pb  # noqa: E402

NAME = "fake_seg"
SLOW_RULES = ("verify-net-in-out", "ckpt-export", "workflow-properties")
FAST_RULES = tuple(r for r in cb.RULES if r not in SLOW_RULES)

# a network that TorchScript cannot script (varargs forward) but can trace; imported by the
# configs of the fake bundle from a module written next to it
TRACE_ONLY_NET = '''
import torch


class TraceOnlyNet(torch.nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, *inputs):
        return self.conv(inputs[0])
'''


# ---------------------------------------------------------------------------------------------
# the fake bundle
# ---------------------------------------------------------------------------------------------
def _tensor(fmt: str, channels: int, channel_def: dict) -> dict:
    return {
        "type": "image",
        "format": fmt,
        "modality": "CT",
        "num_channels": channels,
        "spatial_shape": ["32*n", "32*n"],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": channel_def,
    }


def _metadata() -> dict:
    pins = cb.read_pins(REPO_ROOT / "requirements.txt")
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
        "meta_schema_20240725.json",
        "version": "0.1.1",
        "changelog": {"0.1.1": "tiny network", "0.1.0": "first version"},
        "monai_version": pins["monai"],
        "pytorch_version": pins["torch"],
        "numpy_version": pins["numpy"],
        "required_packages_version": {"nibabel": pins["nibabel"], "pytorch-ignite": pins["pytorch-ignite"]},
        "supported_apps": {},
        "name": "Fake segmentation",
        "task": "Segmentation of a fake organ",
        "description": "A tiny bundle to test the repository tools.",
        "authors": "Test",
        "copyright": "Copyright (c) Test",
        "data_source": "synthetic",
        "data_type": "nibabel",
        "intended_use": "tests only",
        "references": ["none"],
        "network_data_format": {
            "inputs": {"image": _tensor("magnitude", 1, {"0": "image"})},
            "outputs": {"pred": _tensor("segmentation", 2, {"0": "background", "1": "organ"})},
        },
    }


def _network(out_channels: int = 2) -> dict:
    return {
        "_target_": "BasicUNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": out_channels,
        "features": [4, 4, 4, 4, 4, 4],
    }


def _common(root: Path) -> dict:
    return {
        "imports": ["$import torch", "$import monai"],
        "bundle_root": str(root),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "network_def": _network(),
        "network": "$@network_def.to(@device)",
    }


def _stage(prefix: str, labelled: bool) -> dict:
    """preprocessing, dataset, dataloader, inferer and postprocessing whose ids start with ``prefix``."""
    keys = ["image", "label"] if labelled else ["image"]
    post = {"_target_": "AsDiscreted", "keys": ["pred", *keys[1:]], "argmax": [True, *[False] * (len(keys) - 1)]}
    return {
        "preprocessing": {"_target_": "Compose", "transforms": [{"_target_": "EnsureTyped", "keys": keys}]},
        "dataset": {"_target_": "Dataset", "data": "$[]", "transform": f"@{prefix}preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": f"@{prefix}dataset", "batch_size": 1},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [post]},
    }


def _evaluator(prefix: str, loader: str) -> dict:
    return {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": loader,
        "network": "@network",
        "inferer": f"@{prefix}inferer",
        "postprocessing": f"@{prefix}postprocessing",
        "val_handlers": f"@{prefix}handlers",
    }


def _inference(root: Path) -> dict:
    return {
        **_common(root),
        **_stage("", labelled=False),
        "handlers": [],
        "evaluator": _evaluator("", "@dataloader"),
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def _train(root: Path) -> dict:
    train = {
        **_stage("train#", labelled=True),
        "handlers": [
            {
                "_target_": "ValidationHandler",
                "validator": "@validate#evaluator",
                "epoch_level": True,
                "interval": "@val_interval",
            }
        ],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": 2,
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "loss_function": "@loss",
            "optimizer": "@optimizer",
            "inferer": "@train#inferer",
            "postprocessing": "@train#postprocessing",
            "train_handlers": "@train#handlers",
        },
    }
    validate = {**_stage("validate#", labelled=True), "handlers": []}
    validate["evaluator"] = _evaluator("validate#", "@validate#dataloader")
    return {
        **_common(root),
        "ckpt_dir": "$@bundle_root + '/models'",
        "val_interval": 1,
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-3},
        "train": train,
        "validate": validate,
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@train#trainer.run()"],
    }


def _write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to the JSON file at ``path`` in place."""
    content = json.loads(path.read_text())
    change(content)
    _write_json(path, content)


def make_bundle(parent: Path, name: str = NAME) -> Path:
    """Write a complete, valid fake bundle with a tiny BasicUNet into ``parent/name``."""
    root = parent / name
    _write_json(root / "configs" / "metadata.json", _metadata())
    _write_json(root / "configs" / "inference.json", _inference(root))
    _write_json(root / "configs" / "train.json", _train(root))
    _write_json(root / "configs" / "quick.json", {"train#trainer#max_epochs": 1})
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("# Fake segmentation\n")
    (root / "LICENSE").write_text("Apache License 2.0\n")
    (root / "large_files.yml").write_text("large_files: []\n")
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path)


def rule_problems(bundle_dir: Path, rule: str, skip: tuple[str, ...] = SLOW_RULES) -> list[cb.Problem]:
    """Problems of one rule, running the rules not in ``skip``."""
    return [p for p in cb.check_bundle(bundle_dir, skip=skip) if p.rule == rule]


def assert_fails(bundle_dir: Path, rule: str, fragment: str, skip: tuple[str, ...] = SLOW_RULES) -> None:
    """``rule`` reports a (non-skipped) problem containing ``fragment``, named by bundle and rule."""
    problems = rule_problems(bundle_dir, rule, skip)
    assert problems, f"rule {rule} found nothing"
    assert all(not p.skipped and p.bundle == bundle_dir.name for p in problems)
    assert any(str(p).startswith(f"{bundle_dir.name}: [{rule}] ") and fragment in str(p) for p in problems), problems


# ---------------------------------------------------------------------------------------------
# check_bundle
# ---------------------------------------------------------------------------------------------
def test_valid_bundle_passes_every_rule(bundle: Path) -> None:
    report = cb.run_checks(bundle)
    assert report.problems == [], "\n".join(map(str, report.problems))
    assert "works with script" in report.notes["ckpt-export"]
    assert not (bundle / "models").exists() and not (bundle / "eval").exists(), "the checker wrote into the bundle"


def _meta(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A bundle change that edits configs/metadata.json."""
    return lambda b: edit_json(b / "configs" / "metadata.json", change)


def _io(side: str, key: str) -> Callable[[dict], dict]:
    """The ``network_data_format.<side>.<key>`` entry of a metadata dict."""
    return lambda m: m["network_data_format"][side][key]


@pytest.mark.parametrize(
    "rule, change, fragment",
    [
        pytest.param("files", lambda b: (b / "LICENSE").rename(b / "License"), "missing file LICENSE", id="license"),
        pytest.param("files", lambda b: (b / "configs/quick.json").unlink(), "configs/quick.json", id="quick-json"),
        pytest.param("metadata-schema", _meta(lambda m: m.pop("authors")), "'authors' is a required", id="no-authors"),
        pytest.param(
            "metadata-schema",
            _meta(lambda m: _io("inputs", "image")(m).update(num_channels="1")),
            "network_data_format.inputs.image",
            id="channels-as-string",
        ),
        pytest.param("metadata-schema", _meta(lambda m: m.update(references="x")), "references", id="references"),
        pytest.param("changelog", _meta(lambda m: m["changelog"].pop("0.1.1")), "'0.1.1'", id="no-version-entry"),
        pytest.param("changelog", _meta(lambda m: m.pop("changelog")), "no 'changelog'", id="no-changelog"),
        pytest.param(
            "data-format",
            _meta(lambda m: _io("outputs", "pred")(m).pop("channel_def")),
            "outputs.pred has no channel_def",
            id="no-channel-def",
        ),
        pytest.param(
            "data-format",
            _meta(lambda m: m["network_data_format"]["inputs"].pop("image")),
            "inputs.image is missing",
            id="no-image",
        ),
        pytest.param(
            "versions", _meta(lambda m: m.update(monai_version="1.3.0")), "monai_version is '1.3.0'", id="monai-pin"
        ),
        pytest.param(
            "versions",
            _meta(lambda m: m["required_packages_version"].update(nibabel="0.1")),
            "required_packages_version.nibabel is '0.1' but requirements.txt pins nibabel==",
            id="package-pin",
        ),
    ],
)
def test_fast_rule_failures(bundle: Path, rule: str, change: Callable[[Path], object], fragment: str) -> None:
    change(bundle)
    assert_fails(bundle, rule, fragment)


def test_unbroken_fast_rules_stay_quiet(bundle: Path) -> None:
    (bundle / "LICENSE").unlink()
    assert [p.rule for p in cb.check_bundle(bundle, skip=SLOW_RULES)] == ["files"]


def test_missing_metadata_is_reported_by_each_rule(bundle: Path) -> None:
    (bundle / "configs" / "metadata.json").unlink()
    rules = {p.rule for p in cb.check_bundle(bundle, skip=SLOW_RULES)}
    assert rules == set(FAST_RULES)


REQUIRED_META_KEYS = json.loads(cb.META_SCHEMA.read_text())["required"]


def test_kept_meta_schema_requires_the_documented_fields() -> None:
    documented = {"schema", "version", "monai_version", "pytorch_version", "numpy_version",
                  "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"}
    assert set(REQUIRED_META_KEYS) == documented


@pytest.mark.parametrize("key", REQUIRED_META_KEYS)
def test_metadata_missing_a_required_key_fails(bundle: Path, key: str) -> None:
    _meta(lambda m: m.pop(key))(bundle)
    fragment = "must provide the `schema` field" if key == "schema" else f"'{key}' is a required property"
    assert_fails(bundle, "metadata-schema", fragment)


def test_metadata_schema_is_checked_offline(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept schema is read, never downloaded: the metadata's URL is not fetched, whatever it names."""
    import monai.apps.utils

    def no_download(*args, **kwargs):
        raise AssertionError("the metadata check tried to download")

    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", no_download)
    _meta(lambda m: m.update(schema="https://example.invalid/releases/meta_schema_20240725.json"))(bundle)
    assert rule_problems(bundle, "metadata-schema") == []
    _meta(lambda m: m.update(schema="https://example.invalid/releases/meta_schema_20220324.json"))(bundle)
    assert_fails(bundle, "metadata-schema", "is not the meta schema checked here")


def test_a_changed_kept_schema_is_refused(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = tmp_path / cb.META_SCHEMA.name
    changed.write_text(cb.META_SCHEMA.read_text().replace('"authors",', ""))
    monkeypatch.setattr(cb, "META_SCHEMA", changed)
    _meta(lambda m: m.pop("authors"))(bundle)
    assert_fails(bundle, "metadata-schema", "hash check of existing file failed")


def test_verify_net_in_out_detects_wrong_output_channels(bundle: Path) -> None:
    edit_json(bundle / "configs/inference.json", lambda c: c.update(network_def=_network(out_channels=3)))
    assert_fails(bundle, "verify-net-in-out", "output channel number `3`", skip=("ckpt-export", "workflow-properties"))


def test_export_opt_out_is_a_skip(bundle: Path) -> None:
    reason = "dynamic control flow"
    edit_json(bundle / "configs/metadata.json", lambda m: m.update(export={"torchscript": False, "reason": reason}))
    report = cb.run_checks(bundle, skip=("verify-net-in-out", "workflow-properties"))
    assert report.failures == []
    (skip,) = report.problems
    assert skip.skipped and skip.rule == "ckpt-export" and reason in skip.message
    assert str(skip) == f"{NAME}: [ckpt-export] skipped: {reason}"


def test_export_falls_back_to_tracing(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "fake_trace_only.py").write_text(TRACE_ONLY_NET)
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.setenv("PYTHONPATH", str(modules))
    edit_json(
        bundle / "configs/inference.json",
        lambda c: c.update(network_def={"_target_": "fake_trace_only.TraceOnlyNet", "out_channels": 2}),
    )
    report = cb.run_checks(bundle, skip=("verify-net-in-out", "workflow-properties"))
    assert report.problems == [], "\n".join(map(str, report.problems))
    assert "works with trace (input [1, 1, 32, 32])" in report.notes["ckpt-export"]


def test_workflow_properties_detect_missing_property(bundle: Path) -> None:
    edit_json(bundle / "configs/train.json", lambda c: c.pop("dataset_dir"))
    fragment = "train.json (train): required properties missing: ['dataset_dir']"
    assert_fails(bundle, "workflow-properties", fragment, skip=("verify-net-in-out", "ckpt-export"))


def _handlers_under_other_id(config: dict) -> None:
    config["extra_handlers"] = config.pop("handlers")
    config["evaluator"]["val_handlers"] = "@extra_handlers"


def test_workflow_properties_detect_wrong_optional_id(bundle: Path) -> None:
    edit_json(bundle / "configs/inference.json", _handlers_under_other_id)
    fragment = "inference.json (infer): check_properties() returned ['handlers']"
    assert_fails(bundle, "workflow-properties", fragment, skip=("verify-net-in-out", "ckpt-export"))


def test_spatial_shape_is_made_concrete() -> None:
    assert cb.concrete_spatial_shape([16, "32*n", "2**p"]) == (16, 32, 2)
    assert cb.concrete_spatial_shape(["*", 8], accepts=lambda s: s[0] >= 4) == (4, 8)
    with pytest.raises(ValueError):
        cb.eval_dim("__import__('os')")


def test_cli_prints_problems_and_exit_code(bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert cb.main([str(bundle), "--skip", "export,verify", "--skip", "properties"]) == 0
    (bundle / "LICENSE").unlink()
    assert cb.main([str(bundle), "--skip", "export,verify,properties"]) == 1
    out = capsys.readouterr().out
    assert f"{NAME}: [files] missing file LICENSE" in out
    assert "checked 1 bundle(s): 1 problem(s), 0 skipped" in out


# ---------------------------------------------------------------------------------------------
# package_bundles
# ---------------------------------------------------------------------------------------------
UNDECLARED = ("models/README.md", "models/checkpoint_epoch=3.pt", "models/text_embeddings/enc/abc.pt")


def _add_outputs(bundle_dir: Path) -> None:
    """Files that packaging must leave out, and two declared weights (shipped only with --weights inside/mirror)."""
    outputs = ("data/img.nii.gz", "eval/metrics.csv", "logs/train.log", "runs/events", "ckpt/last.pt", *UNDECLARED)
    for rel in (*outputs, "models/model.pt", "models/model.ts", "configs/__pycache__/x.pyc", "docs/old.pyc"):
        (bundle_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle_dir / rel).write_bytes(b"output")
    (bundle_dir / "large_files.yml").write_text("shipped_files: [models/model.pt, models/model.ts]\nlarge_files: []\n")


def test_packaging_is_deterministic_and_complete(bundle: Path, tmp_path: Path) -> None:
    _add_outputs(bundle)
    first = pb.package_bundle(bundle, tmp_path / "a")
    (bundle / "docs" / "README.md").touch()  # a newer mtime must not change the zip
    second = pb.package_bundle(bundle, tmp_path / "b")
    assert first == second and first["file"] == f"{NAME}_v0.1.1.zip"
    zip_a, zip_b = tmp_path / "a" / first["file"], tmp_path / "b" / second["file"]
    assert zip_a.read_bytes() == zip_b.read_bytes()
    with zipfile.ZipFile(zip_a) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == sorted(names)
    kept = {"configs/metadata.json", "custom_components/__init__.py", "LICENSE", "large_files.yml"}
    assert {f"{NAME}/{rel}" for rel in kept} <= set(names)
    assert not [n for n in names if n.startswith(f"{NAME}/models/")]  # undeclared files never, weights not asked for
    outputs = tuple(f"{NAME}/{d}/" for d in ("data", "eval", "logs", "runs", "ckpt"))
    assert not [n for n in names if n.startswith(outputs)]
    assert not [n for n in names if n.endswith((".pt", ".ts", ".pyc")) or "__pycache__" in n]
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and i.external_attr >> 16 == 0o100644 for i in infos)
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)


def test_packaging_with_weights_and_index(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _add_outputs(bundle)
    out = tmp_path / "dist"
    assert pb.main(["--out", str(out), "--with_weights", str(bundle)]) == 0
    index = json.loads((out / "index.json").read_text())["bundles"]
    entry = index[NAME]
    zip_path = out / entry["file"]
    assert entry["version"] == "0.1.1" and entry["size"] == zip_path.stat().st_size
    assert entry["sha256"] == pb.sha256_file(zip_path)
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(n for n in zf.namelist() if n.startswith(f"{NAME}/models/")) == [
            f"{NAME}/models/model.pt", f"{NAME}/models/model.ts"]  # the declared files, nothing else from models/
        assert not [n for n in zf.namelist() if n.startswith(f"{NAME}/data/")]
    assert str(zip_path) in capsys.readouterr().out


def test_packaging_weights_on_the_mirror(bundle: Path, tmp_path: Path) -> None:
    _add_outputs(bundle)
    entry = pb.package_bundle(bundle, tmp_path / "mirror", weights="mirror")
    files = {f["path"]: f for f in entry["large_files"]}
    assert sorted(files) == ["models/model.pt", "models/model.ts"]
    for f in files.values():
        assert f["file"] == f"{NAME}_v0.1.1_files/{f['path']}"
        assert f["sha256"] == pb.sha256_file(tmp_path / "mirror" / f["file"]) == pb.sha256_file(bundle / f["path"])
    with zipfile.ZipFile(tmp_path / "mirror" / entry["file"]) as zf:
        names = zf.namelist()
        yml = zf.read(f"{NAME}/large_files.yml").decode()
    assert not [n for n in names if n.endswith((".pt", ".ts"))]
    # without --mirror_url the URLs are relative to the mirror folder (tools/fetch_bundle.py resolves them)
    assert f'url: "{NAME}_v0.1.1_files/models/model.pt"' in yml and f'hash_val: "{files["models/model.pt"]["sha256"]}"' in yml
    with pytest.raises(ValueError, match="weights must be one of"):
        pb.package_bundle(bundle, tmp_path / "x", weights="outside")
