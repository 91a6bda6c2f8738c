"""The thin wrappers around ``custom_components.utils.run_bundle_workflow``: the tests' ``run_bundle`` and
``run_torchrun`` (tests/conftest.py) and the demo's ``run_step`` (tools/demo.py)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from conftest import REPO, TEARDOWN_ABORT, check_run, overrides_from_args, run_bundle, run_torchrun

sys.path.insert(0, str(REPO / "tools"))
import demo  # noqa: E402

# a workflow that only prints: `run` is what `python -m monai.bundle run` evaluates
HELLO = {"who": "nobody", "run": "$print('hello ' + str(@who))"}
FAILING = {"run": "$int('not a number')"}


def write_config(folder: Path, name: str, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(content))
    return path


def test_overrides_from_args() -> None:
    assert overrides_from_args(["--a", "1", "--b#c=x y", "--a", "2"]) == {"a": "2", "b#c": "x y"}
    with pytest.raises(ValueError, match="expected --key"):
        overrides_from_args(["--a", "1", "stray"])
    with pytest.raises(ValueError, match="--a has no value"):
        overrides_from_args(["--a"])


def test_run_bundle_runs_the_workflow_with_overrides(tmp_path: Path) -> None:
    config = write_config(tmp_path, "hello.json", HELLO)
    proc = run_bundle([config], "--who", "the tests")
    assert "hello the tests" in check_run(proc)
    assert proc.args[1:4] == ["-m", "monai.bundle", "run"] and "--who" in proc.args
    failed = run_bundle([write_config(tmp_path, "fail.json", FAILING)])  # a failure is returned, not raised
    assert failed.returncode != 0 and "ValueError" in failed.stdout + failed.stderr


def fake_runs(monkeypatch: pytest.MonkeyPatch, outputs: list[tuple[int, str]]) -> list[dict]:
    """Replace run_bundle_workflow (as conftest calls it) by one returning ``outputs`` in turn; the calls' arguments."""
    calls: list[dict] = []

    def fake(configs, overrides=None, **kwargs):
        calls.append({"configs": configs, "overrides": overrides, **kwargs})
        returncode, output = outputs[len(calls) - 1]
        return subprocess.CompletedProcess(["python"], returncode, output, "")

    monkeypatch.setattr(conftest.utils, "run_bundle_workflow", fake)
    return calls


def test_run_torchrun_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_runs(monkeypatch, [(0, "ok")])
    assert run_torchrun(["a.json"], "--max_epochs", "1", port=29512, nproc=3).returncode == 0
    (call,) = calls
    assert call["launcher"] == ["-m", "torch.distributed.run", "--nproc_per_node=3", "--master_port", "29512"]
    assert call["overrides"] == {"max_epochs": "1"} and call["check"] is False
    assert call["env"]["OMP_NUM_THREADS"] == "1" and str(REPO) in call["env"]["PYTHONPATH"]


@pytest.mark.parametrize(
    "outputs, calls_expected, returncode",
    [
        pytest.param([(134, TEARDOWN_ABORT), (0, "ok")], 2, 0, id="abort-then-success"),
        pytest.param([(134, TEARDOWN_ABORT), (134, TEARDOWN_ABORT)], 2, 134, id="abort-twice"),
        pytest.param([(1, "ValueError: bad config")], 1, 1, id="other-failure-no-retry"),
    ],
)
def test_run_torchrun_retries_only_a_teardown_abort(monkeypatch: pytest.MonkeyPatch, outputs, calls_expected,
                                                    returncode) -> None:
    calls = fake_runs(monkeypatch, outputs)
    assert run_torchrun(["a.json"], port=29513).returncode == returncode
    assert len(calls) == calls_expected


def test_demo_step_logs_command_and_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = tmp_path / "repo" / "bundles" / "fake" / "configs"
    write_config(configs, "hello.json", HELLO)
    write_config(configs, "fail.json", FAILING)
    monkeypatch.setattr(demo, "REPO", tmp_path / "repo")
    workdir = tmp_path / "work"
    result = demo.run_step("fake", demo.Step("hello", ("hello.json",), (("who", "the demo"),)), workdir)
    assert result["ok"] and result["seconds"] > 0
    log = Path(result["log"]).read_text()
    assert log.splitlines()[0] == result["command"] and "hello the demo" in log
    args = shlex.split(result["command"])
    assert args[args.index("--bundle_root") + 1] == str(workdir) and args[args.index("--who") + 1] == "the demo"
    failed = demo.run_step("fake", demo.Step("fail", ("fail.json",)), workdir)
    assert not failed["ok"] and "ValueError" in Path(failed["log"]).read_text()
