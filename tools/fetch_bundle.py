"""Install a bundle from an internal mirror, checking every file against the mirror's sha256 index.

Usage::

    python tools/fetch_bundle.py NAME --mirror https://mirror.example/bundles --dest /opt/bundles
    python tools/fetch_bundle.py NAME --mirror file:///media/usb/bundles --dest . --version 0.2.0
    python tools/fetch_bundle.py NAME --mirror /media/usb/bundles --dest . --force   # replace an installed copy

A mirror is a folder written by ``tools/package_bundles.py`` (zips, ``index.json`` and, with
``--weights mirror``, the weight files), served over HTTP(S) or reached as a local path / ``file://`` URL.

The command reads ``index.json``, downloads the bundle's zip into a temporary folder inside ``--dest``
and compares its sha256 with the index *before unpacking*; a mismatch is refused with an error that
names the file and both hashes. It then unpacks the zip (refusing entries outside the bundle folder),
downloads the weights the index lists (each checked the same way) into the unpacked folder, and only
then renames the complete folder to ``<dest>/<name>``. Whatever fails, nothing is left behind but what
was there before. The installed bundle carries ``custom_components`` and runs from its folder, e.g.
``python -m monai.bundle run --config_file configs/inference.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

INDEX_NAME = "index.json"
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A bundle could not be installed; nothing was written to the destination."""


class IntegrityError(FetchError):
    """A downloaded file does not have the sha256 the mirror's index lists."""


def mirror_url(mirror: str) -> str:
    """The mirror as a URL ending with ``/``: ``http(s)://`` and ``file://`` are kept, a local path becomes ``file://``."""
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "file"):
        return mirror.rstrip("/") + "/"
    path = Path(mirror).expanduser().resolve()
    if not path.is_dir():
        raise FetchError(f"mirror folder not found: {path}")
    return path.as_uri() + "/"


def _open(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http, https and file only, see mirror_url)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: the mirror answered HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"{url}: cannot reach the mirror ({getattr(e, 'reason', e)})") from e


def read_index(base: str, timeout: float = 60.0) -> dict:
    """``bundles`` of the mirror's ``index.json``."""
    url = urllib.parse.urljoin(base, INDEX_NAME)
    with _open(url, timeout) as response:
        try:
            index = json.loads(response.read().decode())
        except ValueError as e:
            raise FetchError(f"{url}: not a valid index (JSON error: {e})") from e
    if not isinstance(index.get("bundles"), dict):
        raise FetchError(f"{url}: not a bundle index (no 'bundles' mapping)")
    return index["bundles"]


def download(url: str, target: Path, sha256: str, size: int | None = None, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``target`` with progress output; raise :class:`IntegrityError` if its sha256 differs."""
    digest, done, last_report = hashlib.sha256(), 0, 0
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    with _open(url, timeout) as response, open(target, "wb") as f:
        for chunk in iter(lambda: response.read(CHUNK), b""):
            f.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if size and done - last_report >= 16 * CHUNK:
                print(f"  {name}: {done / CHUNK:.0f} / {size / CHUNK:.0f} MiB", flush=True)
                last_report = done
    actual = digest.hexdigest()
    if actual != sha256.lower():
        raise IntegrityError(
            f"{url}: sha256 mismatch: the index lists {sha256}, the downloaded file has {actual} ({done} bytes). "
            "The file is corrupt or was altered on the mirror; nothing was installed."
        )
    print(f"  {name}: {done} bytes, sha256 ok", flush=True)


def safe_extract(zip_path: Path, out_dir: Path, name: str) -> Path:
    """Unpack ``zip_path`` into ``out_dir``; every entry must lie inside ``<name>/``. Returns ``out_dir/name``."""
    with zipfile.ZipFile(zip_path) as zf:
        for member in zf.namelist():
            parts = PurePosixPath(member).parts
            if member.startswith("/") or ".." in parts or "\\" in member or not parts or parts[0] != name:
                raise FetchError(f"{zip_path.name}: entry {member!r} lies outside the bundle folder {name}/; refused")
        zf.extractall(out_dir)
    root = out_dir / name
    if not (root / "configs" / "metadata.json").is_file():
        raise FetchError(f"{zip_path.name}: no {name}/configs/metadata.json inside; not a bundle")
    return root


def fetch_bundle(
    name: str, mirror: str, dest: str | os.PathLike = ".", version: str | None = None, force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Install bundle ``name`` from ``mirror`` into ``dest/name`` (see the module docstring); the installed folder."""
    base = mirror_url(mirror)
    index = read_index(base, timeout)
    if name not in index:
        raise FetchError(f"{urllib.parse.urljoin(base, INDEX_NAME)} has no bundle {name!r} (it has: {sorted(index)})")
    entry = index[name]
    if version is not None and str(entry.get("version")) != str(version):
        raise FetchError(f"the mirror has {name} version {entry.get('version')}, not the requested {version}")
    dest = Path(dest).expanduser().resolve()
    final = dest / name
    if final.exists() and not force:
        raise FetchError(f"{final} already exists; remove it or pass --force to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    print(f"installing {name} {entry.get('version')} from {base} into {final}", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=dest))
    try:
        zip_path = work / PurePosixPath(entry["file"]).name
        download(urllib.parse.urljoin(base, entry["file"]), zip_path, entry["sha256"], entry.get("size"), timeout)
        root = safe_extract(zip_path, work / "unpacked", name)
        for large in entry.get("large_files", []):
            target = (root / large["path"]).resolve()
            if not target.is_relative_to(root.resolve()):
                raise FetchError(f"index entry of {name}: large file path {large['path']!r} lies outside the bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            download(urllib.parse.urljoin(base, large["file"]), target, large["sha256"], large.get("size"), timeout)
        old = work / "previous"
        if final.exists():  # --force: swap the old copy out only once the new one is complete
            os.replace(final, old)
        try:
            os.replace(root, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"installed {final}", flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    """Command line entry; exit status 1 with one error line when the bundle cannot be installed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="bundle name, as in the mirror's index.json")
    parser.add_argument("--mirror", required=True, help="mirror URL (http, https, file) or folder")
    parser.add_argument("--dest", default=".", help="folder to install the bundle into (default: .)")
    parser.add_argument("--version", default=None, help="refuse anything but this version")
    parser.add_argument("--force", action="store_true", help="replace an installed copy of the bundle")
    parser.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    args = parser.parse_args(argv)
    try:
        fetch_bundle(args.name, args.mirror, args.dest, args.version, args.force, args.timeout)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
