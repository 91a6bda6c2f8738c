"""The optimizers the bundle configs build: each config names the optimizer class itself (``optimizer#_target_``), and
``configs/adamw.json`` is the overlay that switches a bundle's SGD to AdamW."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import REPO

BUNDLES = REPO / "bundles"
ADAMW_BUNDLES = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/adamw.json"))


def build_optimizer(bundle: str, *configs: str, **overrides) -> torch.optim.Optimizer:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("optimizer")


def test_the_switch_is_offered_where_it_was() -> None:
    assert ADAMW_BUNDLES == ["bcp_acdc_segmentation", "levit_unet_synapse_segmentation"]


@pytest.mark.parametrize("bundle", ADAMW_BUNDLES)
def test_train_json_builds_sgd_with_momentum(bundle: str) -> None:
    opt = build_optimizer(bundle, "train.json")
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 1e-4


@pytest.mark.parametrize("bundle", ADAMW_BUNDLES)
def test_adamw_overlay_switches_the_optimizer(bundle: str) -> None:
    opt = build_optimizer(bundle, "train.json", "adamw.json", learning_rate=0.002, weight_decay=0.05)
    assert type(opt) is torch.optim.AdamW
    assert "momentum" not in opt.defaults
    assert opt.defaults["lr"] == 0.002 and opt.defaults["weight_decay"] == 0.05
    # the overlay changes nothing else: the scheduler still drives the optimizer
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / c) for c in ("train.json", "adamw.json")])
    assert parser.get_parsed_content("lr_scheduler").optimizer is parser.get_parsed_content("optimizer")


def test_quick_recipes_keep_their_optimizers() -> None:
    levit = build_optimizer("levit_unet_synapse_segmentation", "train.json", "quick.json")
    assert type(levit) is torch.optim.AdamW and levit.defaults["lr"] == 1e-3
    bcp = build_optimizer("bcp_acdc_segmentation", "train.json", "quick.json")
    assert type(bcp) is torch.optim.SGD and bcp.defaults["momentum"] == 0.9


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return found + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


@pytest.mark.parametrize("config", sorted(BUNDLES.glob("*/configs/*.json")),
                         ids=lambda p: f"{p.parents[1].name}/{p.name}")
def test_custom_component_targets_exist(config: Path) -> None:
    """Every ``custom_components.*`` target a config names is importable (a removed helper fails here, not at run)."""
    for target in _targets(json.loads(config.read_text())):
        if target.startswith("custom_components."):
            module, _, name = target.rpartition(".")
            assert hasattr(importlib.import_module(module), name), f"{config}: {target} does not exist"
