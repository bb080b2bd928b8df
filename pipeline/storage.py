"""Object stores and other remote storage, through fsspec (s3://, gs://, az://, https://, ...).

The stages stream local files: Parquet parts written by append and committed by renaming a folder,
which object stores cannot do. So remote storage sits at the edges of a build, where the data
enters and leaves it:

- **Inputs** given as URLs (a spec's `inputs`, or `--inputs s3://bucket/raw`) are fetched into
  `<build>/remote-inputs/<scheme>/<bucket>/<key>` before the first stage. A file already there with
  the same size and ETag (or modification time) is not downloaded again; a download lands under a
  temporary name and is renamed when complete. Manifests record the URL (and the bytes' sha256), not
  the cache path (`pipeline.documents.display_url`).
- **Publishing** (`build --publish URL`, `llama-recipe publish BUILD URL`) uploads every committed
  folder of a build — the stage folders, tokenizer, mixture, token shards — and BUILD.json. A folder
  whose remote manifest.json equals the local one is skipped, so publishing again after a rerun
  uploads only what changed. manifest.json goes last: on the store, as on disk, a folder without
  one is incomplete, and a replaced folder loses its manifest first.
- **Fetching** a published folder (`fetch_folder`, used by `train --data s3://.../tokens`) downloads
  it and checks every file against the manifest's sha256.

Credentials and endpoints are fsspec's own configuration (environment variables such as
AWS_ACCESS_KEY_ID and FSSPEC_S3_ENDPOINT_URL, or ~/.config/fsspec/*.json), so nothing here names a
cloud.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from fsspec.core import url_to_fs

from pipeline.documents import BUILD_RECORD, MANIFEST, REMOTE_INPUTS, StageError, is_complete, sha256_file
from pipeline.ledger import build_folders, listed_files

_SIDECAR_SUFFIX = ".fetched.json"  # beside each fetched file: the remote size and version it came from

Progress = Callable[[str], None]


def is_remote(path: str | Path) -> bool:
    """True for a URL fsspec should open (s3://..., https://...); False for local paths and file://."""
    text = str(path)
    if "://" not in text:
        return False
    return text.split("://", 1)[0] not in ("file", "local")


def absolute(location: str) -> str:
    """A URL as it is, a local path made absolute (what a build records and a deployment passes on)."""
    return location if is_remote(location) else str(Path(location).resolve())


def join(base: str, relative: str) -> str:
    """`relative` under `base`, where base is a local folder or a URL."""
    if is_remote(relative) or Path(relative).is_absolute():
        return relative
    if is_remote(base):
        return base.rstrip("/") + "/" + relative
    return str(Path(base) / relative)


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def filesystem(url: str):
    """(fsspec filesystem, path) for a URL, or a StageError naming the URL: an unknown scheme, or a
    known one whose package is not installed (gcsfs for gs://, adlfs for az://; s3fs is pinned)."""
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise StageError(f"{url}: {exc}") from exc


def cache_path(url: str, cache_root: Path) -> Path:
    """Where a remote file is kept locally: <cache_root>/<scheme>/<bucket or host>/<key>."""
    scheme, rest = url.split("://", 1)
    parts = [p for p in PurePosixPath(rest).parts if p not in ("", "/", ".", "..")]
    return cache_root.joinpath(scheme, *parts)


def _version(info: dict[str, Any]) -> dict[str, Any]:
    """What identifies one version of a remote object: its size and, where the store gives one,
    its ETag or modification time."""
    version = {"size": info.get("size")}
    for key in ("ETag", "etag", "md5", "LastModified", "mtime", "last_modified", "updated"):
        if info.get(key) is not None:
            version[key] = str(info[key])
    return version


def _download(fs, remote_path: str, target: Path, check: Callable[[Path], None]) -> None:
    """Download to a temporary name beside `target`, check it, then rename: `target` is either the
    old file or the whole new one, never a partial download."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        fs.get_file(remote_path, str(partial))
        check(partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _fetch_file(fs, remote_path: str, url: str, local: Path, info: dict[str, Any]) -> bool:
    """Download one object unless the cached copy is of the same version; True when downloaded."""
    sidecar = local.with_name(local.name + _SIDECAR_SUFFIX)
    version = _version(info)
    if local.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == version and local.stat().st_size == version["size"]:
        return False
    def check(partial: Path) -> None:
        if version["size"] is not None and partial.stat().st_size != version["size"]:
            raise StageError(f"{url}: downloaded {partial.stat().st_size} bytes, the store lists {version['size']}")

    _download(fs, remote_path, local, check)
    sidecar.write_text(json.dumps(version, sort_keys=True) + "\n")
    return True


def fetch_inputs(patterns: list[str], cache_root: Path, file_patterns: tuple[str, ...] = ("*",),
                 progress: Progress | None = None) -> list[str]:
    """Local paths for a stage's inputs: local entries unchanged; remote files, globs and folders
    fetched into `cache_root` and replaced by the cached files (folders: the files matching
    `file_patterns`, as a local folder would be searched). Raises StageError when a remote pattern
    matches nothing."""
    local: list[str] = []
    for pattern in patterns:
        if not is_remote(pattern):
            local.append(pattern)
            continue
        try:
            local += _fetch_pattern(pattern, cache_root, file_patterns, progress)
        except OSError as exc:  # what fsspec raises for access, network and missing-bucket errors
            raise StageError(f"{pattern}: {exc}") from exc
    return local


def _fetch_pattern(pattern: str, cache_root: Path, file_patterns: tuple[str, ...], progress: Progress | None) -> list[str]:
    """One remote file, glob or folder into the cache; the cached files' paths."""
    fs, path = filesystem(pattern)
    scheme = pattern.split("://", 1)[0]
    local: list[str] = []
    if _has_glob(path):
        infos = fs.glob(path, detail=True)
    elif fs.isdir(path):
        infos = fs.find(path, detail=True)
        infos = {p: i for p, i in infos.items() if any(fnmatch.fnmatch(posixpath.basename(p), pat) for pat in file_patterns)}
    elif fs.exists(path):
        infos = {path: fs.info(path)}
    else:
        raise StageError(f"{pattern}: not found")
    files = sorted((p, i) for p, i in infos.items() if i.get("type", "file") == "file")
    if not files:
        raise StageError(f"{pattern}: no file matches this pattern")
    for remote_path, info in files:
        url = f"{scheme}://{remote_path.split('://', 1)[-1]}"
        target = cache_path(url, cache_root)
        if _fetch_file(fs, remote_path, url, target, info) and progress:
            progress(f"fetched {url} ({info.get('size', 0):,} bytes)")
        local.append(str(target))
    return local


# ---------------------------------------------------------------------------------------------
# Publishing a build and fetching a published folder.


def committed_folders(build: Path) -> list[Path]:
    """The complete folders of a build (stage folders, tokenizer, mixture, token shards); leftover
    temporary folders (dot names) and incomplete ones are not published."""
    return [f for f in build_folders(build) if not f.name.startswith(".") and is_complete(f)]


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))


def _makedirs(fs, folder: str, made: set[str]) -> None:
    """Parent folders for filesystems that have them (local, NFS, HDFS); object stores ignore it."""
    if folder not in made:
        fs.makedirs(folder, exist_ok=True)
        made.add(folder)


def publish(build: Path, url: str, progress: Progress | None = None) -> dict[str, Any]:
    """Upload the committed folders of `build` to `url` (see the module docstring); returns
    {"uploaded": [...], "unchanged": [...], "files": n, "bytes": n}."""
    build = Path(build)
    fs, root = filesystem(url)
    root = root.rstrip("/")
    report: dict[str, Any] = {"uploaded": [], "unchanged": [], "files": 0, "bytes": 0}
    for folder in committed_folders(build):
        relative = folder.relative_to(build).as_posix()
        remote = f"{root}/{relative}" if relative != "." else root
        local_manifest = (folder / MANIFEST).read_bytes()
        remote_manifest = f"{remote}/{MANIFEST}"
        if fs.exists(remote_manifest):
            if fs.cat_file(remote_manifest) == local_manifest:
                report["unchanged"].append(relative)
                continue
            fs.rm_file(remote_manifest)  # the old version is incomplete from here on
        files = _folder_files(folder)
        targets = {path: f"{remote}/{path.relative_to(folder).as_posix()}" for path in files}
        if fs.exists(remote):
            for stale in set(fs.find(remote)) - set(targets.values()):
                fs.rm_file(stale)
        made: set[str] = set()
        for path, target in targets.items():
            _makedirs(fs, posixpath.dirname(target), made)
            fs.put_file(str(path), target)
            report["files"] += 1
            report["bytes"] += path.stat().st_size
        _makedirs(fs, remote, made)
        fs.pipe_file(remote_manifest, local_manifest)
        report["files"] += 1
        report["bytes"] += len(local_manifest)
        report["uploaded"].append(relative)
        if progress:
            progress(f"published {relative} ({len(files) + 1} files)")
    if (build / BUILD_RECORD).is_file():
        _makedirs(fs, root, set())
        fs.pipe_file(f"{root}/{BUILD_RECORD}", (build / BUILD_RECORD).read_bytes())
    return report


def fetch_folder(url: str, local: Path, progress: Progress | None = None) -> Path:
    """Download a published folder (one with manifest.json) to `local`, checking every file against
    the manifest's sha256; files already there with the right checksum are kept."""
    fs, root = filesystem(url)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{MANIFEST}"):
        raise StageError(f"{url}: no {MANIFEST} there (not a published folder, or its upload is incomplete)")
    manifest_bytes = fs.cat_file(f"{root}/{MANIFEST}")
    manifest = json.loads(manifest_bytes)
    local = Path(local)
    if is_complete(local) and (local / MANIFEST).read_bytes() == manifest_bytes:
        return local
    expected = {entry["path"]: entry for entry in listed_files(manifest)}
    for remote_file in fs.find(root):
        relative = remote_file[len(root) + 1:]  # fsspec lists paths as it takes them: root + "/" + ...
        if relative == MANIFEST:
            continue
        target = local / relative
        entry = expected.get(relative)
        if entry and target.is_file() and sha256_file(target) == entry["sha256"]:
            continue
        def check(partial: Path, entry=entry, relative=relative) -> None:
            if entry and sha256_file(partial) != entry["sha256"]:
                raise StageError(f"{url}/{relative}: checksum differs from the manifest's")

        _download(fs, remote_file, target, check)
        if progress:
            progress(f"fetched {relative}")
    missing = [p for p in expected if not (local / p).is_file()]
    if missing:
        raise StageError(f"{url}: the manifest lists files the store does not have: {', '.join(missing[:5])}")
    (local / MANIFEST).write_bytes(manifest_bytes)  # last: the local copy is complete from here on
    return local

