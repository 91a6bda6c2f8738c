"""Distribution safety: a mirror is trusted no further than its hashes and its rules (``tools/fetch_bundle.py``),
a bundle ships only what it declares (``tools/package_bundles.py``), and LViT's report sentences never leave the
machine (``custom_components.data.text_embedding``).

The fetch cases are a table: each row alters a copy of a good mirror of a tiny bundle, served over HTTP on
127.0.0.1 only (the server's special files send bounded bodies), runs ``tools/fetch_bundle.py`` as a user does,
and expects exit status 1 (or 128 + the signal), one ``error:`` line naming the rule, no traceback and an empty
destination.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import (REPO, bundle_env, check_run, copy_bundle, run_bundle, write_default_intensity_record,
                      write_random_weights)

sys.path.insert(0, str(REPO / "tools"))

import fetch_bundle as fb  # noqa: E402
import package_bundles as pb  # noqa: E402

from custom_components.data.text_embedding import HashTextEncoder, TextEmbeddingCache, default_text_cache_dir  # noqa: E402

NAME = "tiny_seg"
FETCH = [sys.executable, str(REPO / "tools" / "fetch_bundle.py")]
DRIP_BYTES = 400  # the drip file sends at most this many bytes, one every DRIP_PERIOD_S (a bounded loop)
DRIP_PERIOD_S = 0.05
ENDLESS_CHUNKS = 4096  # the "endless" body stops after 4096 x 64 KiB = 256 MiB, or when the client hangs up


# ------------------------------------------------------------------------------------------------------------------
# a tiny bundle, its mirror, and a loopback server with misbehaving files
# ------------------------------------------------------------------------------------------------------------------
def make_tiny_bundle(root: Path, declared: tuple[str, ...] = ("models/model.pt",)) -> Path:
    bundle = root / NAME
    for rel, text in {
        "configs/metadata.json": json.dumps({"version": "0.1.0"}),
        "configs/inference.json": json.dumps({"greeting": "hello"}),
        "docs/README.md": "# tiny\n",
        "LICENSE": "Apache-2.0\n",
        "large_files.yml": "shipped_files:\n" + "".join(f"  - {p}\n" for p in declared) + "large_files: []\n",
    }.items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text(text)
    for rel in declared:
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_bytes(os.urandom(4096))
    return bundle


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        base = self.path.rsplit("/", 1)[-1]
        try:
            if base == "endless.bin":  # no Content-Length, 64 KiB chunks until the client hangs up (bounded)
                self.send_response(200)
                self.end_headers()
                for _ in range(ENDLESS_CHUNKS):
                    self.wfile.write(b"\0" * 65536)
            elif base == "drip.bin":  # announces nothing, sends one byte every DRIP_PERIOD_S (bounded)
                self.send_response(200)
                self.end_headers()
                for _ in range(DRIP_BYTES):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(DRIP_PERIOD_S)
            elif base == "redirect.bin":
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/model.pt")
                self.end_headers()
            else:
                super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A good mirror of the tiny bundle (``--weights mirror``) in ``root/good``; the server serves ``root`` on
    127.0.0.1 only."""
    tmp = tmp_path_factory.mktemp("safety")
    root = tmp / "served"
    root.mkdir()
    src = make_tiny_bundle(tmp / "src")
    pb.package_bundles([str(src)], root / "good", weights="mirror")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"root": root, "url": f"http://127.0.0.1:{httpd.server_address[1]}", "tmp": tmp}
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _case_mirror(server, case: str) -> Path:
    folder = server["root"] / case
    shutil.copytree(server["root"] / "good", folder)
    return folder


# ------------------------------------------------------------------------------------------------------------------
# the table: (id, alteration of the index entry (entry, mirror folder, tmp) -> extra CLI args, expected fragment)
# ------------------------------------------------------------------------------------------------------------------
def _large(entry):
    return entry["large_files"][0]


def _outside_models(entry, folder, tmp):
    evil = json.dumps({"run": ["$print('code from the mirror')"]}).encode()
    (folder / "evil_inference.json").write_bytes(evil)
    _large(entry).update(path="configs/inference.json", file="evil_inference.json", size=len(evil), sha256=_sha(evil))


def _undeclared(entry, folder, tmp):
    _large(entry)["path"] = "models/extra.pt"  # same file, hash and size: only the path is wrong


def _absolute(entry, folder, tmp):
    _large(entry)["file"] = str((folder / _large(entry)["file"]).resolve())  # exists, right hash


def _file_url_outside(entry, folder, tmp):
    outside = tmp / "outside" / "model.pt"
    outside.parent.mkdir(exist_ok=True)
    shutil.copyfile(folder / _large(entry)["file"], outside)
    _large(entry)["file"] = outside.as_uri()


def _oversize(entry, folder, tmp):
    _large(entry)["file"] = "endless.bin"


def _zip_bomb(entry, folder, tmp):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(f"{NAME}/configs/metadata.json", json.dumps({"version": "0.1.0"}))
        with zf.open(f"{NAME}/docs/zeros.txt", "w") as f:  # 64 MiB of zeros, about 64 KiB packed
            for _ in range(64):
                f.write(b"\0" * (1 << 20))
    (folder / "bomb.zip").write_bytes(buf.getvalue())
    entry.update(file="bomb.zip", size=len(buf.getvalue()), sha256=_sha(buf.getvalue()))


def _unpacked_limit(entry, folder, tmp):
    return ["--max_unpacked_mb", "0.01"]  # the good zip unpacks to more than 10 KiB


def _drip(entry, folder, tmp):
    entry.update(file="drip.bin", size=10 * DRIP_BYTES)
    return ["--timeout", "2"]


def _redirect(entry, folder, tmp):
    _large(entry)["file"] = "redirect.bin"


def _no_file(entry, folder, tmp):
    del _large(entry)["file"]


def _size_not_a_number(entry, folder, tmp):
    entry["size"] = "12 MB"


def _index_pin(entry, folder, tmp):
    return ["--index_sha256", "0" * 64]


def _symlink_out_of_file_mirror(entry, folder, tmp):
    weight = folder / _large(entry)["file"]
    outside = tmp / "outside_link_target.pt"
    shutil.copyfile(weight, outside)
    weight.unlink()
    weight.symlink_to(outside)
    return ["--mirror", folder.as_uri()]


CASES = [
    ("path_outside_models", _outside_models, "is not under models/"),
    ("undeclared_path", _undeclared, "is not declared by the bundle"),
    ("absolute_path", _absolute, "is not a plain relative path"),
    ("file_url_outside", _file_url_outside, "is not a plain relative path"),
    ("symlink_out_of_file_mirror", _symlink_out_of_file_mirror, "resolves outside the mirror folder"),
    ("redirect", _redirect, "the mirror redirects"),
    ("oversize_body", _oversize, "sends more than the 4096 bytes the index lists"),
    ("zip_bomb", _zip_bomb, "refused as a zip bomb"),
    ("unpacked_size", _unpacked_limit, "(--max_unpacked_mb)"),
    ("slow_drip_deadline", _drip, "did not finish within --timeout 2 s"),
    ("missing_file", _no_file, "large_files[0] has no 'file'"),
    ("size_not_a_number", _size_not_a_number, "not a byte count"),
    ("index_sha256_mismatch", _index_pin, "sha256 mismatch: --index_sha256"),
]


def _assert_refused(proc_rc: int, stderr: str, fragment: str, dest: Path, rc: int = 1) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc_rc == rc, stderr
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0], lines[0]
    assert list(dest.iterdir()) == [], list(dest.iterdir())  # nothing installed, no partial .fetch-* folder


@pytest.mark.parametrize("case, alter, fragment", CASES, ids=[c[0] for c in CASES])
def test_fetch_refuses_what_breaks_the_rules(server, tmp_path, case, alter, fragment):
    folder = _case_mirror(server, case)
    index = json.loads((folder / "index.json").read_text())
    entry = index["bundles"][NAME]
    extra = alter(entry, folder, tmp_path) or []
    (folder / "index.json").write_text(json.dumps(index))
    dest = tmp_path / "dest"
    dest.mkdir()
    args = ["--mirror", f"{server['url']}/{case}", *extra] if "--mirror" not in extra else extra
    start = time.monotonic()
    proc = subprocess.run([*FETCH, NAME, "--dest", str(dest), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=tmp_path)
    _assert_refused(proc.returncode, proc.stderr, fragment, dest)
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_the_partial_folder(server, tmp_path, signum):
    case = f"signal_{signum}"
    folder = _case_mirror(server, case)
    index = json.loads((folder / "index.json").read_text())
    index["bundles"][NAME].update(file="drip.bin", size=10 * DRIP_BYTES)
    (folder / "index.json").write_text(json.dumps(index))
    dest = tmp_path / "dest"
    dest.mkdir()
    proc = subprocess.Popen([*FETCH, NAME, "--mirror", f"{server['url']}/{case}", "--dest", str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        for _ in range(400):  # until the download into .fetch-* has started (at most 20 s)
            if list(dest.glob(".fetch-*/*.bin")):
                break
            time.sleep(0.05)
        assert list(dest.glob(".fetch-*")), "the fetch never started"
        time.sleep(0.3)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_refused(proc.returncode, stderr, f"interrupted by {signal.Signals(signum).name}", dest, rc=128 + signum)


def test_good_mirror_installs_with_its_pin(server, tmp_path):
    """The control of the table: the unaltered mirror installs, by HTTP with the index pinned and from the folder."""
    good = server["root"] / "good"
    pin = _sha((good / "index.json").read_bytes())
    proc = subprocess.run([*FETCH, NAME, "--mirror", f"{server['url']}/good", "--dest", str(tmp_path / "a"),
                           "--index_sha256", pin, "--timeout", "60"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [NAME]
    assert (tmp_path / "a" / NAME / "models" / "model.pt").stat().st_size == 4096
    installed = fb.fetch_bundle(NAME, str(good), tmp_path / "b")
    assert (installed / "models" / "model.pt").read_bytes() == (tmp_path / "a" / NAME / "models" / "model.pt").read_bytes()


def test_malformed_index_is_one_line(server, tmp_path):
    folder = _case_mirror(server, "not_json")
    (folder / "index.json").write_text("{ not json")
    dest = tmp_path / "dest"
    dest.mkdir()
    proc = subprocess.run([*FETCH, NAME, "--mirror", f"{server['url']}/not_json", "--dest", str(dest)],
                          capture_output=True, text=True, timeout=60)
    _assert_refused(proc.returncode, proc.stderr, "not a valid index", dest)


def test_zip_holding_undeclared_weights_is_refused(tmp_path):
    """Nothing under models/ but what the bundle declares, even inside a zip whose hash the index lists."""
    src = make_tiny_bundle(tmp_path / "src")
    mirror = tmp_path / "mirror"
    pb.package_bundles([str(src)], mirror, weights="inside")
    entry = json.loads((mirror / "index.json").read_text())["bundles"][NAME]
    zip_path = mirror / entry["file"]
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr(f"{NAME}/models/stolen.pt", b"data")
    index = {"bundles": {NAME: {**entry, "size": zip_path.stat().st_size, "sha256": _sha(zip_path.read_bytes())}}}
    (mirror / "index.json").write_text(json.dumps(index))
    dest = tmp_path / "dest"
    with pytest.raises(fb.FetchError, match="holds models/stolen.pt, which the bundle does not declare"):
        fb.fetch_bundle(NAME, str(mirror), dest)
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# packaging ships what a bundle declares, and nothing else
# ------------------------------------------------------------------------------------------------------------------
def test_packaging_ships_only_declared_files(tmp_path, capsys):
    src = make_tiny_bundle(tmp_path / "src", declared=("models/model.pt", "models/pretrained/model.pt"))
    for rel in ("models/checkpoint_epoch=3.pt", "models/text_embeddings/hash384_len10/abc.pt", "models/notes.txt",
                "eval/predictions/p_seg.nii.gz", "logs/train.log", "data/qata/dataset.json", "configs/run.log",
                ".cache/x.pt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"patient")
    mirror = tmp_path / "mirror"
    assert pb.main(["--out", str(mirror), "--weights", "mirror", str(src)]) == 0
    out = capsys.readouterr().out
    assert "left out models/checkpoint_epoch=3.pt" in out and "left out models/text_embeddings/" in out
    pin = _sha((mirror / "index.json").read_bytes())
    assert f"--index_sha256 {pin}" in out
    entry = json.loads((mirror / "index.json").read_text())["bundles"][NAME]
    assert [f["path"] for f in entry["large_files"]] == ["models/model.pt", "models/pretrained/model.pt"]
    files = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    assert files == ["index.json", f"{NAME}_v0.1.0.zip", f"{NAME}_v0.1.0_files/models/model.pt",
                     f"{NAME}_v0.1.0_files/models/pretrained/model.pt"]
    with zipfile.ZipFile(mirror / entry["file"]) as zf:
        names = [n for n in zf.namelist() if not n.startswith(f"{NAME}/custom_components/")]
        yml = zf.read(f"{NAME}/large_files.yml").decode()
    assert sorted(names) == [f"{NAME}/{r}" for r in ("LICENSE", "configs/inference.json", "configs/metadata.json",
                                                     "docs/README.md", "large_files.yml")]
    assert '  - "models/pretrained/model.pt"' in yml.split("large_files:")[0]  # the declaration travels
    # a declared path under models/ other than model.pt installs
    installed = fb.fetch_bundle(NAME, str(mirror), tmp_path / "dest", index_sha256=pin)
    assert (installed / "models" / "pretrained" / "model.pt").read_bytes() == (src / "models/pretrained/model.pt").read_bytes()
    assert not (installed / "models" / "checkpoint_epoch=3.pt").exists()


@pytest.mark.parametrize("declared, error", [
    ("configs/inference.json", "is not under models/"),
    ("models/../configs/inference.json", "not a plain relative path"),
    ("/etc/passwd", "not a plain relative path"),
    ("models/text_embeddings/abc.pt", "a cache or log file"),
    ("models/missing.pt", "declared in large_files.yml (shipped_files) but missing"),
])
def test_packaging_refuses_bad_declarations(tmp_path, capsys, declared, error):
    src = make_tiny_bundle(tmp_path / "src")
    (src / "large_files.yml").write_text(f"shipped_files:\n  - {declared}\nlarge_files: []\n")
    assert pb.main(["--out", str(tmp_path / "mirror"), "--weights", "mirror", str(src)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and error in err, err


# ------------------------------------------------------------------------------------------------------------------
# LViT's report sentences: the cache keeps no text, lives outside the bundle, and nothing ships the sentence
# ------------------------------------------------------------------------------------------------------------------
SENTENCE = "Quokkastein sentinel xq7319 shows bilateral zorbexian opacity in the lower left lung."
NEEDLES = [SENTENCE.lower().encode(), b"quokkastein", b"zorbexian"]


def _leaks(data: bytes, depth: int = 0) -> bool:
    """The sentence (or one of its rare words, any case) in ``data``, or in any entry of ``data`` as a zip (a .pt
    file is one), decompressed, recursively."""
    if any(n in data.lower() for n in NEEDLES):
        return True
    if depth < 4 and data[:4] == b"PK\x03\x04":
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            return False
        return any(_leaks(zf.read(i), depth + 1) for i in zf.infolist() if not i.is_dir())
    return False


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def _assert_no_sentence(root: Path) -> int:
    """Scan every file below ``root`` (bytes, zip entries, loaded .pt contents); the number of files scanned."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert not _leaks(path.read_bytes()), f"the sentence is in {path}"
        if path.suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            assert not [s for s in _strings(loaded) if "quokkastein" in s.lower()], path
    return len(files)


def test_text_cache_keeps_no_text_and_defaults_outside_bundles(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Path(default_text_cache_dir()) == tmp_path / "xdg" / "custom_components" / "text_embeddings"
    cache = TextEmbeddingCache(default_text_cache_dir(), HashTextEncoder(10, 16))
    cache.precompute([SENTENCE])
    (path,) = (tmp_path / "xdg").rglob("*.pt")
    assert _assert_no_sentence(tmp_path / "xdg") == 1
    assert sorted(torch.load(path, weights_only=True)) == ["encoder", "sentence", "text_len", "tokens"]
    assert (path.parent.parent.stat().st_mode & 0o777) == 0o700  # created private to the user
    other_len = TextEmbeddingCache(default_text_cache_dir(), HashTextEncoder(5, 16))
    assert other_len.key(SENTENCE) != cache.key(SENTENCE) and SENTENCE not in cache.key(SENTENCE)


@pytest.mark.slow
def test_lvit_sentence_never_leaves_the_machine(tmp_path):
    """LViT inference with a distinctive sentence, then packaging with mirror weights and an install: the sentence
    is nowhere in the mirror (zip entries, .pt files, index) nor in the installed copy."""
    name = "lvit_qata_covid19_segmentation"
    src = copy_bundle(name, tmp_path / "src")
    write_random_weights(src)
    write_default_intensity_record(src)
    env = bundle_env()
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    configs = [src / "configs" / "inference.json", src / "configs" / "quick.json"]
    check_run(run_bundle(configs, "--text", SENTENCE, "--text_encoder", "hash", "--num_workers", "0", cwd=src, env=env))
    assert list((src / "eval" / "predictions").glob("*_seg.*"))
    cached = list((tmp_path / "xdg" / "custom_components" / "text_embeddings").rglob("*.pt"))
    assert cached, "the text cache is not in the per-user cache folder"
    _assert_no_sentence(tmp_path / "xdg")  # the cache itself keeps no text
    assert not [p for p in src.rglob("*") if "text_embeddings" in p.parts]

    mirror = tmp_path / "mirror"
    assert pb.main(["--out", str(mirror), "--weights", "mirror", str(src)]) == 0
    pin = _sha((mirror / "index.json").read_bytes())
    dest = tmp_path / "installed"
    proc = subprocess.run([*FETCH, name, "--mirror", str(mirror), "--dest", str(dest), "--index_sha256", pin],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _assert_no_sentence(mirror) >= 3  # index, zip, model.pt
    assert _assert_no_sentence(dest) > 10
    large = json.loads((mirror / "index.json").read_text())["bundles"][name]["large_files"]
    assert [f["path"] for f in large] == ["models/model.pt", "models/model.pt.json"]
