"""The ledger of a build: re-read every manifest and check that nothing was lost or changed.

`llama-recipe verify BUILD` runs `verify_build`. For every folder of the build (stages/*, tokenizer,
mixture, tokens) it checks, from the files themselves:
  - the folder is complete (has its manifest.json);
  - every file the manifest lists (kept and rejected parts, artifacts, token shards and their
    indexes) exists with the recorded size and sha256;
  - the rows of every Parquet part equal the manifest's `rows`, the kept rows sum to docs_kept and
    the rejected rows to docs_rejected, and docs_in == docs_kept + docs_rejected;
  - every rejected row has a reason, and the reasons counted from the rows are rejected_by_reason;
  - along each source chain, a stage's docs_in equals the docs_kept of the stage it read, and the
    input files it recorded are still the files that stage wrote (same sha256): a stale or
    replaced upstream folder shows here; the mixture reads the sources' final stages and the
    token shards read the mixture, with the same two checks.
Each check that fails is one line naming the folder and file; nothing is repaired.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.documents import MANIFEST, dependency_digest, sha256_file

TOP_FOLDERS = ("tokenizer", "mixture", "tokens")
# Stages whose documents come from the manifests they list as inputs (not from kept parts).
READS_MANIFESTS = ("mixture", "token_shards")


@dataclass
class LedgerReport:
    build: Path
    lines: list[str] = field(default_factory=list)  # one per folder checked
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.lines)

    def render(self) -> str:
        out = [f"verify {self.build}"] + [f"  {line}" for line in self.lines]
        out += [f"  note: {note}" for note in self.notes]
        if self.problems:
            out.append(f"FAILED: {len(self.problems)} problem(s)")
            out += [f"  - {p}" for p in self.problems]
        elif not self.lines:
            out.append("FAILED: no stage folder found")
        else:
            out.append(f"OK: {len(self.lines)} folders, every file and document accounted for")
        return "\n".join(out)


def build_folders(build: Path) -> list[Path]:
    stages = build / "stages"
    folders = sorted(p for p in stages.iterdir() if p.is_dir()) if stages.is_dir() else []
    return folders + [build / name for name in TOP_FOLDERS if (build / name).is_dir()]


def verify_build(build: Path | str) -> LedgerReport:
    build = Path(build)
    report = LedgerReport(build)
    if not build.is_dir():
        report.problems.append(f"{build}: no such build folder")
        return report
    manifests: dict[Path, dict[str, Any]] = {}
    for folder in build_folders(build):
        name = folder.relative_to(build)
        if folder.name.startswith("."):
            # StageFolder's temporary/old names: what a crash leaves; never read as a stage.
            report.notes.append(f"{name}: leftover temporary folder of an interrupted run (ignored; the next run of that stage removes it)")
            continue
        try:
            manifests[folder] = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            report.problems.append(f"{name}: incomplete stage folder (no {MANIFEST})")
        except (OSError, ValueError) as exc:
            report.problems.append(f"{name}/{MANIFEST}: unreadable ({exc})")
    for folder, manifest in manifests.items():
        before = len(report.problems)
        files = _check_files(build, folder, manifest, report.problems)
        _check_counts(build, folder, manifest, report.problems)
        _check_chain(build, folder, manifest, manifests, report.problems)
        status = "ok  " if len(report.problems) == before else "FAIL"
        report.lines.append(
            f"{status} {folder.relative_to(build)}: {manifest.get('docs_in')} in = {manifest.get('docs_kept')} kept"
            f" + {manifest.get('docs_rejected')} rejected, {files} files checked"
        )
    return report


def listed_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file the manifest describes with a sha256, relative to its folder."""
    entries = [*manifest.get("outputs", []), *manifest.get("rejected_outputs", []), *manifest.get("artifacts", [])]
    for shard in (manifest.get("stats") or {}).get("shards", []) if isinstance(manifest.get("stats"), dict) else []:
        if isinstance(shard, dict) and "path" in shard and "sha256" in shard:
            entries.append({"path": shard["path"], "sha256": shard["sha256"]})
            if "idx_path" in shard and "idx_sha256" in shard:
                entries.append({"path": shard["idx_path"], "sha256": shard["idx_sha256"]})
            if "src_path" in shard and "src_sha256" in shard:
                entries.append({"path": shard["src_path"], "sha256": shard["src_sha256"]})
    return entries


def _check_files(build: Path, folder: Path, manifest: dict[str, Any], problems: list[str]) -> int:
    name = folder.relative_to(build)
    entries = listed_files(manifest)
    for entry in entries:
        path = folder / entry["path"]
        where = f"{name}/{entry['path']}"
        if not path.is_file():
            problems.append(f"{where}: listed in the manifest but missing")
            continue
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            problems.append(f"{where}: {path.stat().st_size} bytes, the manifest says {entry['bytes']}")
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"{where}: sha256 differs from the manifest (the file changed after the stage wrote it)")
            continue
        if "rows" in entry:
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception as exc:  # pyarrow raises several types for damaged files
                problems.append(f"{where}: not a readable Parquet file ({exc})")
                continue
            if rows != entry["rows"]:
                problems.append(f"{where}: {rows} rows, the manifest says {entry['rows']}")
    return len(entries)


def _check_counts(build: Path, folder: Path, manifest: dict[str, Any], problems: list[str]) -> None:
    name = folder.relative_to(build)
    docs_in, kept, rejected = (manifest.get(k) for k in ("docs_in", "docs_kept", "docs_rejected"))
    if not all(isinstance(v, int) for v in (docs_in, kept, rejected)):
        problems.append(f"{name}: manifest lacks docs_in/docs_kept/docs_rejected")
        return
    if docs_in != kept + rejected:
        problems.append(f"{name}: docs_in {docs_in} != docs_kept {kept} + docs_rejected {rejected}")
    by_reason = manifest.get("rejected_by_reason") or {}
    if sum(by_reason.values()) != rejected:
        problems.append(f"{name}: rejected_by_reason sums to {sum(by_reason.values())}, docs_rejected is {rejected}")
    outputs, rejected_outputs = manifest.get("outputs", []), manifest.get("rejected_outputs", [])
    if outputs and all("rows" in o for o in outputs):
        rows = sum(o["rows"] for o in outputs)
        if rows != kept:
            problems.append(f"{name}: kept parts list {rows} rows, docs_kept is {kept}")
    if rejected_outputs and all("rows" in o for o in rejected_outputs):
        rows = sum(o["rows"] for o in rejected_outputs)
        if rows != rejected:
            problems.append(f"{name}: rejected parts list {rows} rows, docs_rejected is {rejected}")
    # The reasons themselves, read from the rows.
    counted: Counter = Counter()
    for entry in rejected_outputs:
        path = folder / entry["path"]
        try:
            reasons = pq.read_table(path, columns=["reason"])["reason"].to_pylist()
        except Exception:
            continue  # missing or damaged: already reported by _check_files
        missing = sum(1 for r in reasons if not r)
        if missing:
            problems.append(f"{name}/{entry['path']}: {missing} rejected row(s) without a reason")
        counted.update(r.split(":", 1)[0] for r in reasons if r)
    if rejected_outputs and all((folder / e["path"]).is_file() for e in rejected_outputs) and counted != Counter(by_reason):
        diff = {k: (counted.get(k, 0), by_reason.get(k, 0)) for k in set(counted) | set(by_reason) if counted.get(k, 0) != by_reason.get(k, 0)}
        problems.append(f"{name}: reasons in the rejected rows differ from rejected_by_reason (rows, manifest): {diff}")


def _upstream(build: Path, folder: Path, manifest: dict[str, Any]) -> dict[Path, list[dict[str, Any]]]:
    """The build folders this one read documents from, with the input entries that point at them.
    Inputs are recorded relative to the folder's parent (pipeline.documents._display_path)."""
    base = folder.parent
    found: dict[Path, list[dict[str, Any]]] = {}
    for entry in manifest.get("inputs", []):
        path = Path(entry["path"])
        path = path if path.is_absolute() else base / path
        parts = path.parts
        if manifest.get("stage") in READS_MANIFESTS:
            if path.name != MANIFEST:
                continue
            source_folder = path.parent
        elif "kept" in parts:
            source_folder = Path(*parts[: len(parts) - 1 - parts[::-1].index("kept")])
        else:
            continue  # raw input files, references (manifests), models
        try:
            source_folder.resolve().relative_to(build.resolve())
        except ValueError:
            continue  # read from outside this build: nothing to reconcile with
        found.setdefault(source_folder, []).append(entry)
    return found


def _check_chain(build: Path, folder: Path, manifest: dict[str, Any], manifests: dict[Path, dict[str, Any]],
                 problems: list[str]) -> None:
    name = folder.relative_to(build)
    upstream = _upstream(build, folder, manifest)
    if not upstream:
        return
    total_kept = 0
    for source_folder, entries in upstream.items():
        source_name = source_folder.relative_to(build) if source_folder.is_relative_to(build) else source_folder
        source_manifest = next((m for f, m in manifests.items() if f.resolve() == source_folder.resolve()), None)
        if source_manifest is None:
            problems.append(f"{name}: read {source_name}, which is not a complete folder of this build")
            return
        total_kept += source_manifest.get("docs_kept", 0)
        written = {o["path"]: o.get("sha256") for o in source_manifest.get("outputs", [])}
        for entry in entries:
            path = Path(entry["path"])
            path = path if path.is_absolute() else folder.parent / path
            rel = str(path.relative_to(source_folder))
            if rel == MANIFEST:
                if path.is_file() and entry.get("sha256") and dependency_digest(path) != entry["sha256"]:
                    problems.append(f"{name}: its input {source_name}/{MANIFEST} changed after it ran (stale: rerun it)")
            elif written.get(rel) != entry.get("sha256"):
                problems.append(f"{name}: its input {source_name}/{rel} is not the file {source_name} wrote (stale: rerun it)")
    if manifest.get("docs_in") != total_kept:
        sources = " + ".join(str(f.relative_to(build)) for f in upstream)
        problems.append(f"{name}: docs_in {manifest.get('docs_in')} != docs_kept {total_kept} of {sources}")
