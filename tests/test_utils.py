"""bundle_root() finds the bundle folder however a workflow is started; provenance helpers."""

from __future__ import annotations

import json
import sys

from monai.bundle import ConfigParser, ConfigWorkflow

from custom_components.utils import (
    _config_files_from_argv, as_list, bundle_root, format_mean_sd, markdown_table, mean_sd, run_record,
)


def _bundle(tmp_path):
    cfg = tmp_path / "mybundle" / "configs"
    cfg.mkdir(parents=True)
    (cfg / "train.json").write_text(json.dumps({
        "imports": ["$import custom_components"],
        "bundle_root": "$custom_components.bundle_root()",
        "run": ["$print('root=' + @bundle_root)"],
    }))
    return cfg / "train.json"


def test_bundle_root_inside_config_workflow(tmp_path, monkeypatch, capsys):
    cfg = _bundle(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # no --config_file: only the workflow on the stack can tell
    wf = ConfigWorkflow(config_file=str(cfg), workflow_type=None, logging_file=False, meta_file=None)
    wf.initialize()
    wf.run()
    assert f"root={(tmp_path / 'mybundle').resolve()}" in capsys.readouterr().out


def test_bundle_root_from_command_line(tmp_path, monkeypatch):
    cfg = _bundle(tmp_path)
    monkeypatch.setattr(sys, "argv", ["monai.bundle", "run", "--config_file", repr([str(cfg), "other.json"])])
    parser = ConfigParser()
    parser.read_config(str(cfg))
    assert parser.get_parsed_content("bundle_root") == str((tmp_path / "mybundle").resolve())


def test_argv_forms_and_default(monkeypatch):
    assert _config_files_from_argv(["x", "--config_file=a/configs/t.json"]) == ["a/configs/t.json"]
    assert _config_files_from_argv(["x", "--config_file", "['a.json', 'b.json']"]) == ["a.json", "b.json"]
    monkeypatch.setattr(sys, "argv", ["python"])
    assert bundle_root() == "."


def test_markdown_table_and_record():
    md = markdown_table(["a", "b"], [[1, 0.12345], [None, float("nan")]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| - | - |"]
    rec = run_record("python x.py")
    assert rec["command"] == "python x.py" and rec["hardware"]["cpu_count"] >= 1 and "UTC" in rec["date"]


def test_mean_sd_is_the_sample_sd_over_finite_values_hand_computed():
    import math

    stat = mean_sd([0.5, 0.7, None, float("nan"), 0.9])  # mean 0.7, deviations 0.2: sd sqrt(0.08 / 2) = 0.2
    assert stat["n"] == 3 and math.isclose(stat["mean"], 0.7) and math.isclose(stat["sd"], 0.2)
    assert format_mean_sd(stat) == "0.700 ± 0.200" and format_mean_sd(stat, 1) == "0.7 ± 0.2"
    one = mean_sd([0.25])
    assert one["n"] == 1 and math.isnan(one["sd"]) and format_mean_sd(one) == "0.250"
    assert mean_sd([])["n"] == 0 and format_mean_sd(mean_sd([None])) == "-"


def test_as_list_reads_what_fire_passes():
    assert as_list("1337,1338, 1339", int) == [1337, 1338, 1339] and as_list("text,", str) == ["text"]
    assert as_list((0, 1), int) == [0, 1] and as_list(2, int) == [2] and as_list([1.0], int) == [1]


def test_count_macs_hand_computed():
    import torch

    from custom_components.utils import count_macs

    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)  # 16 outputs x 9 taps
    assert count_macs(conv, torch.zeros(1, 1, 4, 4)) == 144
    lin = torch.nn.Linear(3, 2)  # 3 x 2 products
    assert count_macs(lin, torch.zeros(1, 3)) == 6
