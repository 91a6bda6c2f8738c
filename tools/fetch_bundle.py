"""Install a bundle from an internal mirror, trusting the mirror no further than its hashes and its rules.

Usage::

    python tools/fetch_bundle.py NAME --mirror https://mirror.example/bundles --dest /opt/bundles --index_sha256 HEX
    python tools/fetch_bundle.py NAME --mirror file:///media/usb/bundles --dest . --version 0.2.0
    python tools/fetch_bundle.py NAME --mirror /media/usb/bundles --dest . --force   # replace an installed copy

A mirror is a folder written by ``tools/package_bundles.py`` (zips, ``index.json`` and, with
``--weights mirror``, the weight files), served over HTTP(S) or reached as a local path / ``file://`` URL.

What is checked (the threat model): a mirror, or whoever can write to it, may serve any bytes. The zip and each
weight file must have the sha256 and the size that ``index.json`` lists; ``--index_sha256`` pins the index itself
(the sha256 that ``package_bundles.py`` prints), which is what a hospital should pass: without it, whoever can
replace the index can also replace the zip and its configs. Without a pin the index is still held to its rules:

- every ``file`` is a plain relative path resolved inside the mirror (no absolute path, no URL, no ``..``, no
  symbolic link out of a mirror folder); HTTP redirects are refused (the mirror URL must be the final address) and
  no proxy is used;
- large files go under ``models/`` only, and only to the paths the bundle itself declares (``shipped_files`` of the
  zip's ``large_files.yml``); the zip may hold nothing else under ``models/`` either;
- every download stops as soon as it exceeds the size the index lists (and the index itself past 16 MiB);
- the zip is refused before unpacking if it unpacks to more than ``--max_unpacked_mb`` or if an entry (or the
  whole zip) expands more than 100-fold; entries outside the bundle folder, links and duplicates are refused;
- ``--timeout`` is a deadline for the whole fetch (index, zip, weights and unpacking), not for one read;
- a malformed index ends in one error line naming the entry and the rule, never in a traceback.

The command works in a temporary folder ``.fetch-<name>-*`` inside ``--dest`` and renames the complete bundle to
``<dest>/<name>`` at the end. Whatever fails, including SIGINT, SIGTERM or SIGHUP, the temporary folder is removed
and nothing is left behind but what was there before. The installed bundle carries ``custom_components`` and runs
from its folder, e.g. ``python -m monai.bundle run --config_file configs/inference.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

INDEX_NAME = "index.json"
LARGE_FILES_NAME = "large_files.yml"
DECLARED_KEY = "shipped_files"  # in large_files.yml: the weight files a bundle ships (paths under models/)
WEIGHTS_DIR = "models"
CHUNK = 1 << 20
MAX_INDEX_BYTES = 16 << 20
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MAX_UNPACKED_MB = 8192
MAX_RATIO = 100  # an entry (or the whole zip) may expand at most this much ...
RATIO_MIN_BYTES = 1 << 20  # ... once it unpacks to more than this (small files compress well, harmlessly)
MAX_ENTRIES = 50_000
SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
SEGMENT_RE = re.compile(r"[A-Za-z0-9._+=-]+")


class FetchError(RuntimeError):
    """A bundle could not be installed; nothing was written to the destination."""


class IntegrityError(FetchError):
    """A downloaded file does not have the sha256 (or the size) the mirror's index lists."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived (a ``BaseException``, so that nothing swallows it on its way out)."""

    def __init__(self, signum: int, installed: Path | None = None):
        super().__init__(signum)
        self.signum, self.installed = signum, installed


# ------------------------------------------------------------------------------------------------------------------
# the rules an index (and a bundle's declaration) must follow
# ------------------------------------------------------------------------------------------------------------------
def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_relpath(value: object, what: str) -> str:
    """``value`` as a plain relative POSIX path (letters, digits, ``._+=-`` in each part; no ``.``/``..`` part, no
    scheme, no leading ``/``, no backslash, no ``%``, ``?`` or ``#``); :class:`FetchError` naming ``what`` otherwise."""
    if not isinstance(value, str) or not value:
        raise FetchError(f"{what} is {_short(value)}, not a relative path; refused")
    parts = value.split("/")
    if any(p in ("", ".", "..") or not SEGMENT_RE.fullmatch(p) for p in parts):
        raise FetchError(f"{what} {_short(value)} is not a plain relative path (absolute paths, URLs, '..' and "
                         "special characters are refused)")
    return value


def check_declared_path(value: object, what: str) -> str:
    """A shipped file's path in a bundle: a plain relative path under ``models/``."""
    path = check_relpath(value, what)
    parts = path.split("/")
    if parts[0] != WEIGHTS_DIR or len(parts) < 2:
        raise FetchError(f"{what} {_short(value)} is not under {WEIGHTS_DIR}/: only weights under {WEIGHTS_DIR}/ are "
                         "shipped as large files; refused")
    return path


def declared_files(bundle_dir: str | os.PathLike) -> list[str]:
    """The weight files a bundle declares it ships: ``shipped_files`` of its ``large_files.yml`` (paths under
    ``models/``, checked); ``[]`` when the file or the key is absent."""
    path = Path(bundle_dir) / LARGE_FILES_NAME
    if not path.is_file():
        return []
    try:
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - any parse failure is one error line
        raise FetchError(f"{path}: not readable YAML ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if data is None:
        return []
    if not isinstance(data, dict):
        raise FetchError(f"{path}: not a mapping; refused")
    files = data.get(DECLARED_KEY) or []
    if not isinstance(files, list):
        raise FetchError(f"{path}: {DECLARED_KEY} must be a list of paths under {WEIGHTS_DIR}/")
    checked = [check_declared_path(f, f"{path.name}: {DECLARED_KEY} entry") for f in files]
    if len(set(checked)) != len(checked):
        raise FetchError(f"{path}: {DECLARED_KEY} lists a path twice")
    return checked


def _check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FetchError(f"{what} has size {_short(value)}, not a byte count; refused (malformed index)")
    return value


def _check_sha(value: object, what: str) -> str:
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise FetchError(f"{what} has sha256 {_short(value)}, not 64 hex digits; refused (malformed index)")
    return value.lower()


def check_entry(name: str, entry: object, where: str = INDEX_NAME) -> dict:
    """The index entry of bundle ``name``, checked against the rules (see the module docstring) and normalised:
    ``file``, ``size``, ``sha256``, ``version`` and ``large_files`` (each ``path``, ``file``, ``size``, ``sha256``)."""
    what = f"{where}: entry {name!r}"
    if not isinstance(entry, dict):
        raise FetchError(f"{what} is not a mapping; refused (malformed index)")
    for key in ("file", "size", "sha256"):
        if key not in entry:
            raise FetchError(f"{what} has no {key!r}; refused (malformed index)")
    out = {
        "file": check_relpath(entry["file"], f"{what}: file"),
        "size": _check_size(entry["size"], what),
        "sha256": _check_sha(entry["sha256"], what),
        "version": entry.get("version"),
        "large_files": [],
    }
    if out["version"] is not None and not isinstance(out["version"], (str, int, float)):
        raise FetchError(f"{what} has version {_short(out['version'])}; refused (malformed index)")
    large = entry.get("large_files", [])
    if not isinstance(large, list):
        raise FetchError(f"{what}: large_files is not a list; refused (malformed index)")
    seen: set[str] = set()
    for i, f in enumerate(large):
        fwhat = f"{what}: large_files[{i}]"
        if not isinstance(f, dict):
            raise FetchError(f"{fwhat} is not a mapping; refused (malformed index)")
        for key in ("path", "file", "size", "sha256"):
            if key not in f:
                raise FetchError(f"{fwhat} has no {key!r}; refused (malformed index)")
        path = check_declared_path(f["path"], f"{fwhat}: path")
        if path in seen:
            raise FetchError(f"{fwhat}: path {path!r} is listed twice; refused (malformed index)")
        seen.add(path)
        out["large_files"].append({
            "path": path,
            "file": check_relpath(f["file"], f"{fwhat}: file"),
            "size": _check_size(f["size"], fwhat),
            "sha256": _check_sha(f["sha256"], fwhat),
        })
    return out


# ------------------------------------------------------------------------------------------------------------------
# reading the mirror: a deadline for everything, a size limit for every file
# ------------------------------------------------------------------------------------------------------------------
class Deadline:
    """One deadline for a whole fetch: ``remaining()`` raises :class:`FetchError` once it has passed."""

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise FetchError(f"--timeout must be positive, got {seconds}")
        self.seconds, self.end = float(seconds), time.monotonic() + float(seconds)

    def remaining(self, doing: str = "") -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise FetchError(f"the fetch did not finish within --timeout {self.seconds:g} s"
                             + (f" (while {doing})" if doing else "") + "; nothing was installed")
        return left


def mirror_url(mirror: str) -> str:
    """The mirror as a URL ending with ``/``: ``http(s)://`` and ``file://`` are kept, a local path becomes ``file://``."""
    parts = urllib.parse.urlsplit(mirror)
    if parts.scheme in ("http", "https", "file"):
        if parts.query or parts.fragment:
            raise FetchError(f"mirror URL {mirror!r} has a query or fragment; give the mirror folder's URL")
        if parts.scheme == "file":
            path = Path(urllib.request.url2pathname(parts.path))
            if not path.is_dir():
                raise FetchError(f"mirror folder not found: {path}")
        return mirror.rstrip("/") + "/"
    path = Path(mirror).expanduser().resolve()
    if not path.is_dir():
        raise FetchError(f"mirror folder not found: {path}")
    return path.as_uri() + "/"


class _Body:
    """A file of the mirror being read: ``length`` (announced, or ``None``), ``read(n)`` (at most ``n`` bytes,
    ``b""`` at the end), ``close()``."""

    length: int | None = None

    def read(self, n: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        pass


class _FileBody(_Body):
    def __init__(self, path: Path, root: Path, url: str, deadline: Deadline):
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise FetchError(f"{url}: resolves outside the mirror folder (a link to {real}); refused")
        try:
            st = os.stat(real)
        except OSError as e:
            raise FetchError(f"{url}: not on the mirror ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise FetchError(f"{url}: not a regular file on the mirror; refused")
        self.file, self.length, self.deadline, self.url = open(real, "rb"), st.st_size, deadline, url

    def read(self, n: int) -> bytes:
        self.deadline.remaining(f"reading {self.url}")
        return self.file.read(n)

    def close(self) -> None:
        self.file.close()


class _HttpBody(_Body):
    """One GET on a fresh connection, no redirects, no proxy; every read waits at most until the deadline."""

    def __init__(self, url: str, deadline: Deadline):
        self.url, self.deadline, self.sock = url, deadline, None
        parts = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            self.conn = cls(parts.hostname, parts.port, timeout=deadline.remaining(f"connecting to {url}"))
            self.conn.request("GET", parts.path or "/", headers={"Accept-Encoding": "identity",
                                                                 "User-Agent": "fetch_bundle"})
            self.sock = self.conn.sock  # kept: http.client may drop its own reference once the response is read
            self.resp = self.conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.close()
            self._raise(e, "cannot reach the mirror")
        if self.resp.status != 200:
            where = self.resp.getheader("Location")
            self.close()
            if 300 <= self.resp.status < 400:
                raise FetchError(f"{url}: the mirror redirects (HTTP {self.resp.status}) to {_short(where)}; refused "
                                 "(redirects could lead outside the mirror: give its final URL)")
            raise FetchError(f"{url}: the mirror answered HTTP {self.resp.status} {self.resp.reason}")
        length = self.resp.getheader("Content-Length")
        self.length = int(length) if length and length.strip().isdigit() else None

    def _raise(self, e: BaseException, what: str) -> None:
        if isinstance(e, (TimeoutError, socket.timeout)):  # every wait is bounded by the deadline: it has passed
            raise FetchError(f"the fetch did not finish within --timeout {self.deadline.seconds:g} s (while reading "
                             f"{self.url}); nothing was installed") from None
        self.deadline.remaining(f"reading {self.url}")
        raise FetchError(f"{self.url}: {what} ({type(e).__name__}: {e})") from None

    def read(self, n: int) -> bytes:
        if self.sock is not None:
            self.sock.settimeout(max(0.01, self.deadline.remaining(f"reading {self.url}")))
        try:
            return self.resp.read1(n)
        except (OSError, http.client.HTTPException) as e:
            self._raise(e, "the connection to the mirror broke")
        return b""  # not reached

    def close(self) -> None:
        for closer in (getattr(self, "resp", None), getattr(self, "conn", None)):
            with contextlib.suppress(Exception):
                if closer is not None:
                    closer.close()


def open_mirror_file(base: str, rel: str, deadline: Deadline) -> tuple[str, _Body]:
    """``(URL, body)`` of the mirror file at relative path ``rel`` (checked with :func:`check_relpath`)."""
    url = base + urllib.parse.quote(check_relpath(rel, "mirror file"))
    if not url.startswith(base):  # cannot happen after check_relpath; kept as the rule itself
        raise FetchError(f"{url}: outside the mirror {base}; refused")
    if urllib.parse.urlsplit(base).scheme == "file":
        root = Path(urllib.request.url2pathname(urllib.parse.urlsplit(base).path))
        return url, _FileBody(root / rel, root, url, deadline)
    return url, _HttpBody(url, deadline)


def _stream(body: _Body, url: str, size: int) -> Iterator[bytes]:
    """The chunks of ``body``, refusing a file that announces or sends more than ``size`` bytes, or fewer."""
    if body.length is not None and body.length > size:
        raise IntegrityError(f"{url}: the mirror announces {body.length} bytes, the index lists {size}; refused, "
                             "nothing was installed")
    done = 0
    while True:
        chunk = body.read(CHUNK)
        if not chunk:
            break
        done += len(chunk)
        if done > size:
            raise IntegrityError(f"{url}: the mirror sends more than the {size} bytes the index lists; refused, "
                                 "nothing was installed")
        yield chunk
    if done != size:
        raise IntegrityError(f"{url}: the mirror sent {done} bytes, the index lists {size}; refused, "
                             "nothing was installed")


def read_index(base: str, timeout: float | Deadline = DEFAULT_TIMEOUT_S, index_sha256: str | None = None) -> dict:
    """``bundles`` of the mirror's ``index.json`` (at most 16 MiB; its sha256 must be ``index_sha256`` if given)."""
    deadline = timeout if isinstance(timeout, Deadline) else Deadline(timeout)
    url, body = open_mirror_file(base, INDEX_NAME, deadline)
    data = bytearray()
    try:
        if body.length is not None and body.length > MAX_INDEX_BYTES:
            raise FetchError(f"{url}: {body.length} bytes, more than an index may have ({MAX_INDEX_BYTES}); refused")
        while chunk := body.read(CHUNK):
            data += chunk
            if len(data) > MAX_INDEX_BYTES:
                raise FetchError(f"{url}: more than {MAX_INDEX_BYTES} bytes, more than an index may have; refused")
    finally:
        body.close()
    if index_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != index_sha256.lower():
            raise IntegrityError(f"{url}: sha256 mismatch: --index_sha256 is {index_sha256.lower()}, the mirror's index "
                                 f"has {actual}; the index was altered or is another one; nothing was installed")
    try:
        index = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise FetchError(f"{url}: not a valid index (JSON error: {e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("bundles"), dict):
        raise FetchError(f"{url}: not a bundle index (no 'bundles' mapping)")
    return index["bundles"]


def download(base: str, rel: str, target: Path, sha256: str, size: int, deadline: Deadline) -> None:
    """Stream mirror file ``rel`` into ``target``; :class:`IntegrityError` if its size or sha256 is not the index's."""
    digest, done, last_report = hashlib.sha256(), 0, 0
    url, body = open_mirror_file(base, rel, deadline)
    name = PurePosixPath(rel).name
    try:
        with open(target, "wb") as f:
            for chunk in _stream(body, url, size):
                f.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if size and done - last_report >= 16 * CHUNK:
                    print(f"  {name}: {done / CHUNK:.0f} / {size / CHUNK:.0f} MiB", flush=True)
                    last_report = done
    finally:
        body.close()
    actual = digest.hexdigest()
    if actual != sha256.lower():
        raise IntegrityError(
            f"{url}: sha256 mismatch: the index lists {sha256}, the downloaded file has {actual} ({done} bytes). "
            "The file is corrupt or was altered on the mirror; nothing was installed."
        )
    print(f"  {name}: {done} bytes, sha256 ok", flush=True)


# ------------------------------------------------------------------------------------------------------------------
# unpacking
# ------------------------------------------------------------------------------------------------------------------
def safe_extract(zip_path: Path, out_dir: Path, name: str, max_unpacked: int = DEFAULT_MAX_UNPACKED_MB << 20,
                 max_ratio: float = MAX_RATIO, deadline: Deadline | None = None) -> Path:
    """Unpack ``zip_path`` into ``out_dir``; every entry must lie inside ``<name>/``, be a file or folder, appear
    once; the zip must unpack to at most ``max_unpacked`` bytes and no entry (nor the whole) may expand more than
    ``max_ratio``-fold (checked on the headers before anything is written, and again on the bytes written).
    Returns ``out_dir/name``."""
    label = Path(zip_path).name
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise FetchError(f"{label}: {len(infos)} entries, more than {MAX_ENTRIES}; refused")
            seen: set[str] = set()
            total = 0
            for info in infos:
                member = info.filename
                parts = PurePosixPath(member).parts
                if (member.startswith("/") or ".." in parts or "\\" in member or "\0" in member or not parts
                        or parts[0] != name or ":" in parts[0]):
                    raise FetchError(f"{label}: entry {member!r} lies outside the bundle folder {name}/; refused")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise FetchError(f"{label}: entry {member!r} is a symbolic link; refused")
                key = member.rstrip("/")
                if key in seen:
                    raise FetchError(f"{label}: entry {member!r} appears twice; refused")
                seen.add(key)
                total += info.file_size
                if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
                    raise FetchError(f"{label}: entry {member!r} expands {info.file_size / max(info.compress_size, 1):.0f}"
                                     f"-fold (more than {max_ratio:g}); refused as a zip bomb, nothing was installed")
            if total > max_unpacked:
                raise FetchError(f"{label}: unpacks to {total} bytes, more than the limit of {max_unpacked} "
                                 "(--max_unpacked_mb); refused, nothing was installed")
            zip_size = max(Path(zip_path).stat().st_size, 1)
            if total > RATIO_MIN_BYTES and total > max_ratio * zip_size:
                raise FetchError(f"{label}: unpacks to {total} bytes from {zip_size} ({total / zip_size:.0f}-fold, more "
                                 f"than {max_ratio:g}); refused as a zip bomb, nothing was installed")
            written = 0
            for info in infos:
                target = out_dir.joinpath(*PurePosixPath(info.filename).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                count = 0
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        count += len(chunk)
                        written += len(chunk)
                        if count > info.file_size or written > max_unpacked:
                            raise FetchError(f"{label}: entry {info.filename!r} unpacks to more than its header says; "
                                             "refused, nothing was installed")
                        if deadline is not None:
                            deadline.remaining(f"unpacking {label}")
                        dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        if isinstance(e, FetchError):
            raise
        raise FetchError(f"{label}: not a readable zip ({type(e).__name__}: {e}); refused") from None
    root = out_dir / name
    if not (root / "configs" / "metadata.json").is_file():
        raise FetchError(f"{label}: no {name}/configs/metadata.json inside; not a bundle")
    return root


# ------------------------------------------------------------------------------------------------------------------
# signals: the temporary folder is removed whatever happens
# ------------------------------------------------------------------------------------------------------------------
_SIGNALS = {"critical": 0, "pending": None, "raised": False}


def _on_signal(signum: int, frame) -> None:  # noqa: ARG001
    if _SIGNALS["raised"]:
        return
    if _SIGNALS["critical"]:
        _SIGNALS["pending"] = signum
        return
    _SIGNALS["raised"] = True
    raise Interrupted(signum)


@contextlib.contextmanager
def _critical() -> Iterator[None]:
    """A section a signal does not cut (the final rename, the removal of the temporary folder); a signal that
    arrived meanwhile is raised at its end."""
    _SIGNALS["critical"] += 1
    try:
        yield
    finally:
        _SIGNALS["critical"] -= 1
        if not _SIGNALS["critical"] and _SIGNALS["pending"] is not None and not _SIGNALS["raised"]:
            signum, _SIGNALS["pending"] = _SIGNALS["pending"], None
            _SIGNALS["raised"] = True
            raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted`, so that the temporary folder is cleaned up."""
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _on_signal)


# ------------------------------------------------------------------------------------------------------------------
# the install
# ------------------------------------------------------------------------------------------------------------------
def _files_under(root: Path, sub: str) -> list[str]:
    folder = root / sub
    return sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if not p.is_dir()) if folder.is_dir() else []


def fetch_bundle(
    name: str, mirror: str, dest: str | os.PathLike = ".", version: str | None = None, force: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S, index_sha256: str | None = None,
    max_unpacked_mb: float = DEFAULT_MAX_UNPACKED_MB,
) -> Path:
    """Install bundle ``name`` from ``mirror`` into ``dest/name`` (see the module docstring); the installed folder.

    Args:
        timeout: deadline in seconds for the whole fetch.
        index_sha256: the sha256 the mirror's ``index.json`` must have.
        max_unpacked_mb: the most the zip may unpack to.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FetchError(f"bundle name {_short(name)} is not a plain folder name; refused")
    if index_sha256 is not None and not SHA256_RE.fullmatch(index_sha256):
        raise FetchError(f"--index_sha256 {_short(index_sha256)} is not 64 hex digits")
    deadline = Deadline(timeout)
    base = mirror_url(mirror)
    index_url = base + INDEX_NAME
    index = read_index(base, deadline, index_sha256)
    if name not in index:
        raise FetchError(f"{index_url} has no bundle {name!r} (it has: {sorted(index)[:50]})")
    entry = check_entry(name, index[name], index_url)
    if version is not None and str(entry["version"]) != str(version):
        raise FetchError(f"the mirror has {name} version {entry['version']}, not the requested {version}")
    dest = Path(dest).expanduser().resolve()
    final = dest / name
    if final.exists() and not force:
        raise FetchError(f"{final} already exists; remove it or pass --force to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    needed = entry["size"] + sum(f["size"] for f in entry["large_files"])
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise FetchError(f"{name} needs {needed} bytes (as the index lists) and {dest} has {free} free; nothing installed")
    print(f"installing {name} {entry['version']} from {base} into {final}", flush=True)
    work, installed = None, False
    try:
        with _critical():
            work = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=dest))
        zip_path = work / PurePosixPath(entry["file"]).name
        download(base, entry["file"], zip_path, entry["sha256"], entry["size"], deadline)
        root = safe_extract(zip_path, work / "unpacked", name, int(max_unpacked_mb * (1 << 20)), deadline=deadline)
        zip_path.unlink()
        declared = declared_files(root)
        for rel in _files_under(root, WEIGHTS_DIR):
            if rel not in declared:
                raise FetchError(f"{entry['file']}: holds {rel}, which the bundle does not declare in "
                                 f"{LARGE_FILES_NAME} ({DECLARED_KEY}: {declared}); refused, nothing was installed")
        for large in entry["large_files"]:
            if large["path"] not in declared:
                raise FetchError(f"{index_url}: entry {name!r}: large file {large['path']!r} is not declared by the "
                                 f"bundle ({LARGE_FILES_NAME} {DECLARED_KEY}: {declared}); refused, nothing was installed")
        for large in entry["large_files"]:
            target = root.joinpath(*large["path"].split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            download(base, large["file"], target, large["sha256"], large["size"], deadline)
        deadline.remaining("installing")
        with _critical():
            old = work / "previous"
            if final.exists():  # --force: swap the old copy out only once the new one is complete
                os.replace(final, old)
            try:
                os.replace(root, final)
            except OSError:
                if old.exists():
                    os.replace(old, final)
                raise
            installed = True
    except Interrupted as e:
        if installed:
            e.installed = final
        raise
    finally:
        if work is not None:
            with _critical():
                shutil.rmtree(work, ignore_errors=True)
    print(f"installed {final}", flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    """Command line entry; exit status 1 with one error line when the bundle cannot be installed (128 + the signal
    number when interrupted)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="bundle name, as in the mirror's index.json")
    parser.add_argument("--mirror", required=True, help="mirror URL (http, https, file) or folder")
    parser.add_argument("--dest", default=".", help="folder to install the bundle into (default: .)")
    parser.add_argument("--version", default=None, help="refuse anything but this version")
    parser.add_argument("--force", action="store_true", help="replace an installed copy of the bundle")
    parser.add_argument("--index_sha256", default=None, help="the sha256 index.json must have (printed by "
                        "tools/package_bundles.py); recommended: without it the index is trusted within its rules")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"deadline in seconds for the whole fetch (default: {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--max_unpacked_mb", type=float, default=DEFAULT_MAX_UNPACKED_MB,
                        help=f"the most the bundle's zip may unpack to, in MiB (default: {DEFAULT_MAX_UNPACKED_MB})")
    args = parser.parse_args(argv)
    install_signal_handlers()
    try:
        fetch_bundle(args.name, args.mirror, args.dest, args.version, args.force, args.timeout, args.index_sha256,
                     args.max_unpacked_mb)
    except Interrupted as e:
        signame = signal.Signals(e.signum).name
        if e.installed is not None:
            print(f"error: interrupted by {signame} after {e.installed} was installed", file=sys.stderr)
        else:
            print(f"error: interrupted by {signame}; the partial download was removed, nothing was installed",
                  file=sys.stderr)
        return 128 + e.signum
    except FetchError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {type(e).__name__}: {e}; nothing was installed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
