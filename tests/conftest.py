"""Shared fixtures: the repository root on sys.path, and helpers to run bundle workflows as a user does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def bundle_env(extra_path: str | None = None) -> dict:
    """Environment for a workflow subprocess: repo on PYTHONPATH, few threads, no stdin prompts."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path or str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_bundle(configs: list[str | Path], *args: str, cwd: Path = REPO, env: dict | None = None, run_id: str | None = None,
               timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run [run_id] --config_file [...] <args>``; returns the finished process (never raises)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", repr([str(c) for c in configs]), *args]
    return subprocess.run(cmd, cwd=cwd, env=env or bundle_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def check_run(proc: subprocess.CompletedProcess) -> str:
    """Assert a workflow subprocess succeeded (showing the end of its output if not); return its output."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


TEARDOWN_ABORT = "terminate called without an active exception"


def run_torchrun(configs: list[str | Path], *args: str, port: int, nproc: int = 2,
                 timeout: int = 900) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=<nproc> -m monai.bundle run --config_file [...] <args>`` on CPU (gloo), one thread
    per process; returns the finished process (never raises)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(port),
           "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs]), *args]
    env = bundle_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0 and TEARDOWN_ABORT in proc.stdout + proc.stderr:
        # Known, unexplained: now and then (about 1 run in 8 here, so far only UniverSeg's DDP with unused
        # parameters) a rank aborts at interpreter exit, after its workflow has finished. Run once more; a second
        # abort, or any other failure, fails the test.
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    return proc


BUNDLE_OUTPUTS = ("data", "eval", "logs", "runs", "ckpt", "models", "__pycache__")


def bundle_names() -> list[str]:
    """Every bundle of ``bundles/`` (a folder with ``configs/metadata.json``): what the hospital-path tests cover."""
    return sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())


def copy_bundle(name: str, dest: Path) -> Path:
    """A clean copy of bundle ``name`` (configs, docs, license; no data, outputs or weights) at ``dest/name``."""
    return Path(shutil.copytree(REPO / "bundles" / name, dest / name, ignore=shutil.ignore_patterns(*BUNDLE_OUTPUTS)))


def write_random_weights(bundle_dir: Path, configs: tuple[str, ...] = ("inference.json", "quick.json")) -> Path:
    """Save the random initial weights of the bundle's ``network_def`` (as ``configs`` build it) at its ``ckpt_path``
    (``models/model.pt``): a trained checkpoint's stand-in for tests of how bundles run, not of what they predict."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle_dir / "configs" / c) for c in configs])
    parser["bundle_root"] = str(bundle_dir)
    ckpt = Path(parser.get_parsed_content("ckpt_path"))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), ckpt)
    return ckpt


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
