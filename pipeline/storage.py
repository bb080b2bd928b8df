"""Object stores and other remote storage, through fsspec (s3://, gs://, az://, https://, ...).

The stages write local files: Parquet parts written by append and committed by renaming a folder,
which object stores cannot do. So stage folders live on a local or shared filesystem, and remote
storage sits at the edges of a build, where the data enters and leaves it:

- **Inputs** given as URLs (a spec's `inputs`, or `--inputs s3://bucket/raw`) are listed, never
  fetched as a whole: a glob or a folder becomes one RemoteFile per object (its URL and the store's
  version), and the worker that reads a part copies that one object into its own scratch space
  (`local_input`: $LLAMA_RECIPE_SCRATCH, else the system's temporary folder), reads it and deletes it.
  So a dump is spread over the cluster's disks one file per worker at a time, as cc_net's workers
  each download the WET file they process. Manifests record the URL and version; a stage's identity
  takes the version (an object rewritten in place gets a new ETag or modification time).
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
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fsspec.core import url_to_fs

from pipeline.documents import BUILD_RECORD, MANIFEST, RemoteFile, StageError, is_complete, sha256_file
from pipeline.ledger import build_folders, listed_files

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


def _version(info: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What identifies one version of a remote object: its size and, where the store gives one,
    its ETag or modification time."""
    version = {"size": str(info.get("size"))}
    for key in ("ETag", "etag", "md5", "LastModified", "mtime", "last_modified", "updated"):
        if info.get(key) is not None:
            version[key] = str(info[key])
    return tuple(sorted(version.items()))


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


def list_remote(pattern: str, file_patterns: tuple[str, ...] = ("*",)) -> list[RemoteFile]:
    """The objects a remote input names — one file, a glob, or a folder searched with the reader's
    `file_patterns` as a local folder would be — listed (never downloaded), sorted by URL. Raises a
    StageError naming the URL when it matches nothing or cannot be listed."""
    try:
        fs, path = filesystem(pattern)
        fs.invalidate_cache()  # fsspec keeps listings per process: an object rewritten since is another version
        scheme = pattern.split("://", 1)[0]
        if _has_glob(path):
            infos = fs.glob(path, detail=True)
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)
            infos = {p: i for p, i in infos.items() if any(fnmatch.fnmatch(posixpath.basename(p), pat) for pat in file_patterns)}
        elif fs.exists(path):
            infos = {path: fs.info(path)}
        else:
            raise StageError(f"{pattern}: not found")
    except OSError as exc:  # what fsspec raises for access, network and missing-bucket errors
        raise StageError(f"{pattern}: {exc}") from exc
    files = sorted((p, i) for p, i in infos.items() if i.get("type", "file") == "file")
    if not files:
        raise StageError(f"{pattern}: no file matches this pattern")
    return [RemoteFile(f"{scheme}://{p.split('://', 1)[-1]}", _version(info)) for p, info in files]


def scratch_root() -> Path:
    """Where a worker copies the remote object it reads: $LLAMA_RECIPE_SCRATCH, else the system's
    temporary folder (TMPDIR). Each copy is deleted when its part is written."""
    return Path(os.environ.get("LLAMA_RECIPE_SCRATCH") or tempfile.gettempdir())


COPIES_MADE: list[str] = []  # URLs this process copied (tests check where inputs were read)


@contextmanager
def local_input(path: Path | RemoteFile, record_dir: Path | None = None) -> Iterator[Path]:
    """A local file to read for `path`: a local path as it is; a RemoteFile copied into this
    process's scratch space under its folder and file name (readers take names from them: a
    StackExchange site is its folder), checked against the listed size, removed on exit. With
    `record_dir` (a stage's INPUTS_READ folder) the copy's sha256 and size are recorded there for the
    stage's manifest."""
    if not isinstance(path, RemoteFile):
        yield Path(path)
        return
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="llama-recipe-input-", dir=root))
    parent = path.url.rstrip("/").rsplit("/", 2)
    local = folder / (parent[-2] if len(parent) == 3 else "input") / path.name
    try:
        fs, remote_path = filesystem(path.url)

        def check(partial: Path) -> None:
            if path.size is not None and partial.stat().st_size != path.size:
                raise StageError(f"{path.url}: read {partial.stat().st_size} bytes, the store listed {path.size} "
                                 "(the object changed while the build ran?)")

        try:
            _download(fs, remote_path, local, check)
        except OSError as exc:
            raise StageError(f"{path.url}: {exc}") from exc
        COPIES_MADE.append(path.url)
        if record_dir is not None:
            _record_read(record_dir, path, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record_read(record_dir: Path, remote: RemoteFile, local: Path) -> None:
    """Write {url, sha256, bytes} of the copy read, under a temporary name then renamed (a retried
    part on another worker rewrites the same record)."""
    record_dir.mkdir(parents=True, exist_ok=True)
    entry = {"url": remote.url, "sha256": sha256_file(local), "bytes": local.stat().st_size}
    partial = record_dir / f".{remote.record_name}.{os.getpid()}"
    partial.write_text(json.dumps(entry) + "\n")
    partial.replace(record_dir / remote.record_name)


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

