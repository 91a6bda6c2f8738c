"""Offline distribution: bundles packaged onto a mirror (zips + weights + sha256 index) are served over HTTP on
loopback, installed into empty folders with ``python -m monai.bundle download --url`` and with
``tools/fetch_bundle.py``, and run there without this repository; altered files on the mirror are refused.

Parametrised over every folder of ``bundles/``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, bundle_names, copy_bundle, write_default_intensity_record, write_random_weights

from custom_components.utils import run_bundle_workflow

sys.path.insert(0, str(REPO / "tools"))

import fetch_bundle as fb  # noqa: E402
import package_bundles as pb  # noqa: E402

BUNDLES = bundle_names()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output readable
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """Every bundle with random quick weights, packaged with ``--weights mirror`` into a folder served on loopback."""
    tmp = tmp_path_factory.mktemp("offline")
    folder = tmp / "mirror"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    sources = {}
    for name in BUNDLES:
        src = copy_bundle(name, tmp / "sources")
        sources[name] = write_random_weights(src)
        write_default_intensity_record(src)  # shipped beside the weights (large_files.yml shipped_files)
    pb.package_bundles([str(tmp / "sources" / n) for n in BUNDLES], folder, weights="mirror", mirror_url=url)
    yield {"folder": folder, "url": url, "tmp": tmp, "weights": sources}
    server.shutdown()
    server.server_close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _isolated_env() -> dict:
    """No PYTHONPATH: the installed bundle must resolve ``custom_components`` from its own folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_isolated_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_index_lists_weights_with_hashes(mirror):
    index = json.loads((mirror["folder"] / "index.json").read_text())["bundles"]
    assert sorted(index) == BUNDLES
    for name, entry in index.items():
        assert entry["sha256"] == _sha256(mirror["folder"] / entry["file"])
        large, record = sorted(entry["large_files"], key=lambda f: f["path"])
        assert large["path"] == "models/model.pt" and record["path"] == "models/model.pt.json"
        assert large["sha256"] == _sha256(mirror["folder"] / large["file"]) == _sha256(mirror["weights"][name])
        assert record["sha256"] == _sha256(mirror["folder"] / record["file"])
        with zipfile.ZipFile(mirror["folder"] / entry["file"]) as zf:
            yml = zf.read(f"{name}/large_files.yml").decode()
            assert not [n for n in zf.namelist() if n.endswith((".pt", ".pt.json"))]
        for f in (large, record):
            assert f'hash_val: "{f["sha256"]}"' in yml and f'url: "{mirror["url"]}/{f["file"]}"' in yml


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_install_from_http_mirror_and_infer_offline(mirror, name, tmp_path):
    entry = json.loads((mirror["folder"] / "index.json").read_text())["bundles"][name]

    # 1. MONAI's own commands: the zip by URL, then the weights through large_files.yml (hash checked by MONAI)
    by_monai = tmp_path / "by_monai"
    by_monai.mkdir()
    proc = _run([sys.executable, "-m", "monai.bundle", "download", "--name", name, "--bundle_dir", str(by_monai),
                 "--url", f"{mirror['url']}/{entry['file']}"], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    proc = _run([sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(by_monai / name)],
                cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    # 2. our command: sha256 of the zip and of the weights checked against the index, atomic install
    ours = tmp_path / "ours"
    ours.mkdir()
    proc = _run([sys.executable, str(REPO / "tools" / "fetch_bundle.py"), name, "--mirror", mirror["url"],
                 "--dest", str(ours)], cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "sha256 ok" in proc.stdout and sorted(p.name for p in ours.iterdir()) == [name]
    root = ours / name
    assert _tree(root) == _tree(by_monai / name)
    assert _sha256(root / "models" / "model.pt") == _sha256(mirror["weights"][name])

    # 3. inference from the installed folder, with the repository off sys.path
    probe = _run([sys.executable, "-c", "import sys, custom_components; print(custom_components.__file__); print(sys.path)"],
                 cwd=root)
    assert probe.returncode == 0, probe.stderr[-2000:]
    module_file, path_line = probe.stdout.splitlines()[-2:]
    assert Path(module_file).resolve().is_relative_to(root.resolve()), module_file
    assert str(REPO) not in path_line
    run = run_bundle_workflow(["configs/inference.json", "configs/quick.json"], cwd=root, env=_isolated_env(),
                              timeout=900, check=False)
    assert run.returncode == 0, run.output[-4000:]
    assert list((root / "eval" / "predictions").glob("*_seg.*")), run.output[-2000:]


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize("altered", ["zip", "weights"])
def test_altered_mirror_file_is_refused_and_nothing_is_left(mirror, name, altered, tmp_path):
    tampered = tmp_path / "tampered"
    index = json.loads((mirror["folder"] / "index.json").read_text())
    entry = index["bundles"][name]
    files = [entry["file"], entry["large_files"][0]["file"]]
    for rel in files + ["index.json"]:
        (tampered / rel).parent.mkdir(parents=True, exist_ok=True)
        (tampered / rel).write_bytes((mirror["folder"] / rel).read_bytes())
    victim = tampered / files[0 if altered == "zip" else 1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    dest = tmp_path / "dest"
    dest.mkdir()
    proc = _run([sys.executable, str(REPO / "tools" / "fetch_bundle.py"), name, "--mirror", tampered.as_uri(),
                 "--dest", str(dest)], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sha256 mismatch" in proc.stderr and victim.name in proc.stderr
    assert list(dest.iterdir()) == []


def test_fetch_errors_name_the_problem(mirror, tmp_path):
    name = BUNDLES[0]
    dest = tmp_path / "dest"
    with pytest.raises(fb.FetchError, match="has no bundle 'nope'"):
        fb.fetch_bundle("nope", str(mirror["folder"]), dest)
    with pytest.raises(fb.FetchError, match="not the requested 9.9.9"):
        fb.fetch_bundle(name, str(mirror["folder"]), dest, version="9.9.9")
    with pytest.raises(fb.FetchError, match="cannot reach the mirror"):
        fb.fetch_bundle(name, "http://127.0.0.1:9/", dest, timeout=5)
    with pytest.raises(fb.FetchError, match="mirror folder not found"):
        fb.fetch_bundle(name, str(tmp_path / "missing"), dest)
    installed = fb.fetch_bundle(name, mirror["folder"].as_uri(), dest)
    assert installed == dest / name and (installed / "models" / "model.pt").is_file()
    with pytest.raises(fb.FetchError, match="already exists"):
        fb.fetch_bundle(name, str(mirror["folder"]), dest)
    (installed / "marker").write_text("old copy")
    fb.fetch_bundle(name, str(mirror["folder"]), dest, force=True)
    assert not (installed / "marker").exists() and sorted(p.name for p in dest.iterdir()) == [name]


def test_zip_entries_outside_the_bundle_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("b/configs/metadata.json", "{}")
        zf.writestr("b/../../escape.txt", "x")
    with pytest.raises(fb.FetchError, match="outside the bundle folder"):
        fb.safe_extract(evil, tmp_path / "out", "b")
    assert not (tmp_path / "escape.txt").exists()
