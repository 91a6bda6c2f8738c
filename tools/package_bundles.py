"""Package bundles as deterministic zip files, with a copy of ``custom_components`` inside.

Usage::

    python tools/package_bundles.py --out dist                 # every folder in bundles/
    python tools/package_bundles.py --out dist NAME [NAME ...] # selected bundles (names or folders)
    python tools/package_bundles.py --out dist --weights inside   # keep models/*.pt and *.ts in the zip
    python tools/package_bundles.py --out dist --weights mirror --mirror_url https://mirror.example/bundles

Each bundle becomes ``<out>/<name>_v<version>.zip`` (version from ``configs/metadata.json``) with
the bundle folder on top (``<name>/configs/...``) and the repository's ``custom_components``
package at ``<name>/custom_components/``, so that an unpacked bundle resolves its targets when
run from its folder. Entries are sorted and have fixed timestamps (1980-01-01) and permissions,
so building twice gives byte-identical zips.

What a bundle ships is declared, not swept up. Its weights are the files listed under ``shipped_files`` in its
``large_files.yml`` (paths under ``models/``, e.g. ``models/model.pt`` or ``models/pretrained/model.pt``); they
travel only with ``--weights inside`` (``--with_weights``: in the zip) or ``--weights mirror``, and a declared file
that is missing then is an error. Nothing else under ``models/`` is ever packaged (training checkpoints, caches:
each file left out is named on the output), nor run outputs (``data/``, ``eval/``, ``logs/``, ``runs/``,
``ckpt/``: datasets, predictions, evaluation outputs, logs), caches (``__pycache__``, ``.cache``,
``text_embeddings``) or ``*.pyc`` / ``*.log`` files, anywhere in the bundle.

``--weights mirror`` writes each declared weight file next to the zips instead, as
``<out>/<name>_v<version>_files/<path>``, and replaces the zip's ``large_files.yml`` by one that keeps
``shipped_files`` and lists the files with their sha256 (``hash_type: sha256``) and URL:
``<mirror_url>/<name>_v<version>_files/<path>`` when ``--mirror_url`` is given (then
``python -m monai.bundle download_large_files`` fetches and checks them), else the URL relative to the mirror
folder, which ``tools/fetch_bundle.py`` resolves.

``<out>/index.json`` lists, per bundle, the version, file name, size and sha256 of its zip, and its
mirrored ``large_files`` (path in the bundle, file on the mirror, size, sha256), all held to the rules that
``tools/fetch_bundle.py`` enforces; it is written atomically, and entries of earlier runs whose files are gone or
no longer match are dropped. The command prints the sha256 of ``index.json``: give it to
``tools/fetch_bundle.py --index_sha256`` on the workstations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import fetch_bundle as fb  # noqa: E402  (the rules an index follows, and a bundle's declaration, live there)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
COMPONENTS_DIR = REPO_ROOT / "custom_components"
INDEX_NAME = "index.json"

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--
OUTPUT_DIRS = frozenset({"data", "eval", "logs", "runs", "ckpt"})  # top-level run outputs of a bundle
WEIGHTS_DIR = fb.WEIGHTS_DIR  # only its declared files are ever shipped
WEIGHT_MODES = ("none", "inside", "mirror")
LARGE_FILES_NAME = fb.LARGE_FILES_NAME
IGNORED_DIRS = frozenset({"__pycache__", ".cache", ".pytest_cache", ".ipynb_checkpoints", "text_embeddings"})
IGNORED_SUFFIXES = frozenset({".pyc", ".log"})


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """``version`` of ``configs/metadata.json``."""
    with open(Path(bundle_dir) / "configs" / "metadata.json") as f:
        return str(json.load(f)["version"])


def _is_ignored(rel: PurePosixPath) -> bool:
    """Caches and compiled files, anywhere in a tree."""
    return any(part in IGNORED_DIRS for part in rel.parts) or rel.suffix in IGNORED_SUFFIXES


def _is_bundle_output(rel: PurePosixPath, shipped: frozenset[str]) -> bool:
    """Not packaged: top-level output folders, and every file under ``models/`` that is not in ``shipped``."""
    if rel.parts[0] in OUTPUT_DIRS and len(rel.parts) > 1:
        return True
    return rel.parts[0] == WEIGHTS_DIR and str(rel) not in shipped


def _tree_files(root: Path) -> Iterator[tuple[PurePosixPath, Path]]:
    """``(relative posix path, file)`` of every non-ignored file below ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in IGNORED_DIRS]
        for filename in filenames:
            path = Path(dirpath) / filename
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if not _is_ignored(rel) and path.is_file():
                yield rel, path


def declared_files(bundle_dir: str | os.PathLike) -> list[PurePosixPath]:
    """The weight files a bundle declares it ships (``shipped_files`` of its ``large_files.yml``, under ``models/``);
    ``ValueError`` if the declaration breaks the rules."""
    try:
        declared = [PurePosixPath(p) for p in fb.declared_files(bundle_dir)]
    except fb.FetchError as e:
        raise ValueError(str(e)) from None
    for rel in declared:
        if _is_ignored(rel):
            raise ValueError(f"{Path(bundle_dir).name}: {LARGE_FILES_NAME} declares {rel}, a cache or log file; "
                             "such files are never shipped")
    return declared


def shipped_files(bundle_dir: str | os.PathLike) -> list[tuple[PurePosixPath, Path]]:
    """``(path in the bundle, file)`` of the declared weight files, sorted; ``FileNotFoundError`` if one is missing."""
    root = Path(bundle_dir)
    files = []
    for rel in sorted(declared_files(root)):
        path = root.joinpath(*rel.parts)
        if not path.is_file():
            raise FileNotFoundError(f"{root.name}: {rel} is declared in {LARGE_FILES_NAME} (shipped_files) but missing; "
                                    "train the bundle first, or package without weights")
        files.append((rel, path))
    return files


def left_out_files(bundle_dir: str | os.PathLike) -> list[PurePosixPath]:
    """Files under ``models/`` (caches included) that are never packaged because the bundle does not declare them."""
    root = Path(bundle_dir)
    declared = {str(p) for p in declared_files(root)}
    found = []
    for dirpath, _, filenames in os.walk(root / WEIGHTS_DIR):
        for filename in filenames:
            rel = PurePosixPath((Path(dirpath) / filename).relative_to(root).as_posix())
            if str(rel) not in declared:
                found.append(rel)
    return sorted(found)


def _check_entry(entry: dict) -> None:
    """``entry`` (with its ``name``) follows the rules tools/fetch_bundle.py enforces; ``ValueError`` if not."""
    try:
        fb.check_entry(entry["name"], {k: v for k, v in entry.items() if k != "name"})
    except fb.FetchError as e:
        raise ValueError(f"index entry of {entry['name']} would be refused by tools/fetch_bundle.py: {e}") from None


def bundle_entries(bundle_dir: str | os.PathLike, with_weights: bool = False) -> dict[str, Path]:
    """Archive names (``<name>/...``) and source files of one bundle's zip (with its declared weights if
    ``with_weights``; nothing else from ``models/``)."""
    bundle_dir = Path(bundle_dir).resolve()
    name = bundle_dir.name
    shipped = frozenset(str(rel) for rel, _ in shipped_files(bundle_dir)) if with_weights else frozenset()
    entries = {
        f"{name}/{rel}": path for rel, path in _tree_files(bundle_dir) if not _is_bundle_output(rel, shipped)
    }
    for rel, path in _tree_files(COMPONENTS_DIR):
        arcname = f"{name}/custom_components/{rel}"
        if arcname in entries:
            raise ValueError(f"{bundle_dir} has its own {arcname}; it would clash with the packaged custom_components")
        entries[arcname] = path
    return entries


def _zip_info(arcname: str) -> zipfile.ZipInfo:
    """Entry header with fixed time, permissions and system, deflate compression."""
    info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # unix, so that external_attr holds the permissions
    info.external_attr = FILE_MODE << 16
    return info


def write_zip(entries: dict[str, Path | bytes], zip_path: str | os.PathLike) -> None:
    """Write ``entries`` (archive name -> file or content) sorted by name into a deterministic zip.

    The zip is written next to ``zip_path`` and renamed into place, so a failed run leaves no partial zip."""
    zip_path = Path(zip_path)
    part = zip_path.with_name(zip_path.name + ".part")
    try:
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for arcname in sorted(entries):
                data = entries[arcname]
                zf.writestr(_zip_info(arcname), data if isinstance(data, bytes) else data.read_bytes(), compresslevel=9)
        os.replace(part, zip_path)
    finally:
        part.unlink(missing_ok=True)


def large_files_yaml(files: Sequence[dict], mirror_url: str | None, declared: Sequence[str | PurePosixPath] = ()) -> bytes:
    """``large_files.yml`` (the MONAI bundle format) listing the mirrored weight files with their sha256, and the
    bundle's declaration (``shipped_files``, default: the paths of ``files``)."""
    lines = [
        "# Written by tools/package_bundles.py --weights mirror: the weights of this bundle, on the mirror.",
        "# Fetch them with `python -m monai.bundle download_large_files --bundle_path <bundle folder>`",
        "# (absolute URLs), or install the bundle with tools/fetch_bundle.py, which checks every sha256.",
        "# shipped_files: what this bundle ships (tools/fetch_bundle.py installs no other large file).",
        "shipped_files:",
        *(f'  - "{p}"' for p in (declared or [f["path"] for f in files])),
        "large_files:",
    ]
    for f in files:
        url = f"{mirror_url.rstrip('/')}/{f['file']}" if mirror_url else f["file"]
        lines += [
            f'  - path: "{f["path"]}"',
            f'    url: "{url}"',
            f'    hash_val: "{f["sha256"]}"',
            '    hash_type: "sha256"',
        ]
    return ("\n".join(lines) + "\n").encode()


def package_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    with_weights: bool = False,
    weights: str | None = None,
    mirror_url: str | None = None,
) -> dict:
    """Zip one bundle into ``out_dir``; its index entry (name, version, file, size, sha256[, large_files]).

    Args:
        bundle_dir: the bundle folder.
        out_dir: the output (mirror) folder.
        with_weights: same as ``weights="inside"``.
        weights: ``"none"`` (default: weights left out), ``"inside"`` (in the zip) or ``"mirror"`` (next to the
            zip, listed with hashes in the zip's ``large_files.yml`` and in the index entry).
        mirror_url: base URL of the mirror, for absolute URLs in ``large_files.yml`` (``weights="mirror"``).
    """
    weights = weights or ("inside" if with_weights else "none")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
    bundle_dir, out_dir = Path(bundle_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version = bundle_version(bundle_dir)
    stem = f"{bundle_dir.name}_v{version}"
    entries: dict[str, Path | bytes] = dict(bundle_entries(bundle_dir, with_weights=weights == "inside"))
    left_out = left_out_files(bundle_dir)
    for rel in left_out[:20]:
        print(f"  {bundle_dir.name}: left out {rel} (not declared in {LARGE_FILES_NAME} shipped_files)", flush=True)
    if len(left_out) > 20:
        print(f"  {bundle_dir.name}: left out {len(left_out) - 20} more undeclared file(s) under {WEIGHTS_DIR}/", flush=True)
    large_files = []
    if weights == "mirror":
        files_dir = out_dir / f"{stem}_files"
        if files_dir.exists():
            shutil.rmtree(files_dir)
        for rel, path in shipped_files(bundle_dir):
            target = files_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            large_files.append(
                {"path": str(rel), "file": f"{stem}_files/{rel}", "size": target.stat().st_size, "sha256": sha256_file(target)}
            )
        if large_files:
            entries[f"{bundle_dir.name}/{LARGE_FILES_NAME}"] = large_files_yaml(
                large_files, mirror_url, declared_files(bundle_dir))
    zip_path = out_dir / f"{stem}.zip"
    write_zip(entries, zip_path)
    entry = {
        "name": bundle_dir.name,
        "version": version,
        "file": zip_path.name,
        "size": zip_path.stat().st_size,
        "sha256": sha256_file(zip_path),
    }
    if large_files:
        entry["large_files"] = large_files
    _check_entry(entry)  # what tools/fetch_bundle.py will demand
    return entry


def _still_valid(out_dir: Path, name: str, entry: object) -> bool:
    """An entry of an earlier run is kept only if it follows the index rules and its files are still those it lists."""
    try:
        checked = fb.check_entry(name, entry)
    except fb.FetchError:
        return False
    for f in [checked] + checked["large_files"]:
        path = out_dir.joinpath(*f["file"].split("/"))
        if not path.is_file() or path.stat().st_size != f["size"] or sha256_file(path) != f["sha256"]:
            return False
    return True


def update_index(out_dir: str | os.PathLike, entries: Sequence[dict]) -> Path:
    """Merge ``entries`` into ``<out_dir>/index.json``, atomically; entries of earlier runs that break the index
    rules, or whose files are gone or changed, are dropped (and named)."""
    out_dir = Path(out_dir)
    index_path = out_dir / INDEX_NAME
    index: dict[str, dict] = {}
    if index_path.is_file():
        try:
            old = json.loads(index_path.read_text()).get("bundles", {})
        except (ValueError, AttributeError):
            old = {}
        index = old if isinstance(old, dict) else {}
    for entry in entries:
        _check_entry(entry)
        index[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
    fresh = {e["name"] for e in entries}
    for name in sorted(set(index) - fresh):
        if not (isinstance(name, str) and fb.NAME_RE.fullmatch(name) and _still_valid(out_dir, name, index[name])):
            print(f"  dropped {name!r} from {index_path}: its files are gone, changed or break the index rules")
            del index[name]
    part = index_path.with_name(index_path.name + ".part")
    part.write_text(json.dumps({"bundles": dict(sorted(index.items()))}, indent=2) + "\n")
    os.replace(part, index_path)
    return index_path


def resolve_bundle(name: str) -> Path:
    """A bundle folder from a name in ``bundles/`` or a path."""
    path = Path(name)
    if not path.is_dir():
        path = BUNDLES_DIR / name
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{name}: not a bundle folder (no configs/metadata.json)")
    return path


def default_bundles() -> list[Path]:
    """Every bundle folder in ``bundles/``."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p for p in BUNDLES_DIR.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def package_bundles(
    names: Sequence[str] = (),
    out_dir: str | os.PathLike = "dist",
    with_weights: bool = False,
    weights: str | None = None,
    mirror_url: str | None = None,
) -> list[dict]:
    """Package the named bundles (default: all) into ``out_dir`` and update its index."""
    paths = [resolve_bundle(n) for n in names] or default_bundles()
    entries = [package_bundle(p, out_dir, with_weights, weights, mirror_url) for p in paths]
    update_index(out_dir, entries)
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="bundle names in bundles/ or bundle folders (default: all)")
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument("--weights", choices=WEIGHT_MODES, default=None, help="models/*.pt and *.ts: left out "
                        "(none, default), in the zip (inside), or next to it with hashes in large_files.yml (mirror)")
    parser.add_argument("--with_weights", action="store_true", help="same as --weights inside")
    parser.add_argument("--mirror_url", default=None, help="base URL of the mirror, for absolute large-file URLs")
    args = parser.parse_args(argv)
    try:
        entries = package_bundles(args.names, args.out, args.with_weights, args.weights, args.mirror_url)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for entry in entries:
        print(f"{Path(args.out) / entry['file']}  {entry['size']} bytes  sha256 {entry['sha256']}")
        for f in entry.get("large_files", []):
            print(f"  {Path(args.out) / f['file']}  {f['size']} bytes  sha256 {f['sha256']}")
    index_path = Path(args.out) / INDEX_NAME
    print(f"packaged {len(entries)} bundle(s); index: {index_path}  sha256 {sha256_file(index_path)}")
    print(f"  (give it to tools/fetch_bundle.py --index_sha256 {sha256_file(index_path)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
