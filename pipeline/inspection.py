"""What a stage removed and what it changed: a seeded sample of its rejected documents per reason
(and of its kept ones), and before/after diffs of documents whose text it edited (line dedup, C4's
line filters, arXiv cleaning, GitHub header stripping, Wikipedia cleaning...).

Read from a committed stage folder only (its manifest and Parquet parts), so it works on any build,
old or new. Bounded work at any scale: at most `max_parts` parts are read (a seeded choice of the
stage's parts, all of them when there are fewer), streamed, keeping `n` samples per reason: those
with the smallest hash of (seed, document id), so the same build gives the same samples whoever asks.
A diff pairs each kept document of an output part with the same document in the input part it came
from (a documents stage writes part i from input i, in order).

Three renderings: markdown (the Prefect artifact `<stage>-samples`), the terminal (`llama-recipe
inspect`, rich) and a static HTML page (`inspect --html`).
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import html
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.documents import Document, StageError, is_complete, read_documents, read_manifest

PREVIEW_CHARS = 300  # of each sampled document's text
DIFF_LINES = 40  # of each before/after diff
MAX_PARTS = 8  # parts read per stage by default (0: all)


@dataclass
class Sample:
    id: str
    part: int
    text: str  # the first PREVIEW_CHARS characters
    chars: int  # the whole text's length
    reason: str | None = None  # the full reason ("near_duplicate_book:books/x"), None when kept
    before: str | None = None  # an emptied document's text before the stage (line dedup), previewed


@dataclass
class Edit:
    id: str
    part: int
    chars_before: int
    chars_after: int
    diff: list[str]  # unified diff lines, at most DIFF_LINES
    truncated: bool


@dataclass
class StageSamples:
    stage: str
    folder: str
    manifest: dict[str, Any]
    parts_read: list[int]
    parts_total: int
    rejected: dict[str, list[Sample]] = field(default_factory=dict)  # by reason (the part before ":")
    kept: list[Sample] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)


def _key(seed: int, doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest(), "little")


class _Smallest:
    """The n items with the smallest keys seen (a bounded max-heap), in key order."""

    def __init__(self, n: int):
        self.n, self.heap = n, []

    def offer(self, key: int, make) -> None:
        if self.n <= 0:
            return
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, (-key, make()))
        elif -self.heap[0][0] > key:
            heapq.heapreplace(self.heap, (-key, make()))

    def wants(self, key: int) -> bool:
        return self.n > 0 and (len(self.heap) < self.n or -self.heap[0][0] > key)

    def items(self) -> list[Any]:
        return [item for _, item in sorted(self.heap, key=lambda entry: -entry[0])]


def _sample(doc: Document, part: int) -> Sample:
    text = doc.text or ""
    return Sample(doc.id, part, text[:PREVIEW_CHARS], len(text), doc.reason)


def stage_folder(build_or_folder: Path, stage: str | None = None) -> Path:
    """A stage folder given a build and a stage name (BUILD/stages/STAGE, or BUILD/STAGE for the
    tokenizer, mixture and token shards), or a stage folder itself."""
    candidates = [Path(build_or_folder)] if stage is None else [Path(build_or_folder) / "stages" / stage, Path(build_or_folder) / stage]
    for folder in candidates:
        if is_complete(folder):
            return folder
    raise StageError(f"{candidates[0]}: no complete stage folder (no manifest.json)")


def stage_samples(folder: Path, n: int = 3, seed: int = 0, reason: str | None = None, kept: bool = False,
                  max_parts: int = MAX_PARTS) -> StageSamples:
    """Sample a committed stage folder: `n` rejected documents per reason (only `reason` if given,
    by its name before ":" or whole), `n` kept ones with `kept`, and up to `n` edited documents'
    diffs; reading at most `max_parts` parts (0: all)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    outputs = manifest.get("outputs", [])
    rejected_parts = manifest.get("rejected_outputs", [])
    total = max(len(outputs), len(rejected_parts))
    with_rejected = _choose([i for i, entry in enumerate(rejected_parts) if entry.get("rows", 1)], max_parts, seed)
    with_kept = _choose([i for i, entry in enumerate(outputs) if entry.get("rows", 1)], max_parts, seed)
    result = StageSamples(manifest.get("stage", folder.name), str(folder), manifest,
                          sorted(set(with_rejected) | set(with_kept)), total)

    by_reason: dict[str, _Smallest] = {}
    for index in with_rejected:
        for doc in read_documents(folder / rejected_parts[index]["path"], ["id", "reason"]):
            name = (doc.reason or "").split(":", 1)[0]
            if reason is not None and reason not in (name, doc.reason):
                continue
            by_reason.setdefault(name, _Smallest(n)).offer(_key(seed, doc.id), lambda: (index, doc.id))
        # Texts are read only for the documents sampled (a second pass over the few parts read).
    wanted = {(part, doc_id) for smallest in by_reason.values() for part, doc_id in smallest.items()}
    texts: dict[tuple[int, str], Sample] = {}
    for index in sorted({part for part, _ in wanted}):
        for doc in read_documents(folder / rejected_parts[index]["path"], ["id", "text", "reason"]):
            if (index, doc.id) in wanted:
                texts[(index, doc.id)] = _sample(doc, index)
    emptied = {key for key, sample in texts.items() if sample.chars == 0}
    for index in sorted({part for part, _ in emptied}):  # what the stage emptied: show what it was
        source = _input_part(folder, manifest, index)
        for doc in read_documents(source, ["id", "text"]) if source is not None else ():
            if (index, doc.id) in emptied:
                texts[(index, doc.id)].before = (doc.text or "")[:PREVIEW_CHARS]
    counts = manifest.get("rejected_by_reason", {})
    for name in sorted(by_reason, key=lambda r: (-counts.get(r, 0), r)):
        result.rejected[name] = [texts[item] for item in by_reason[name].items()]

    if kept:
        smallest = _Smallest(n)
        for index in with_kept:
            for doc in read_documents(folder / outputs[index]["path"], ["id", "text"]):
                smallest.offer(_key(seed, doc.id), lambda: _sample(doc, index))
        result.kept = smallest.items()

    result.edits = _edits(folder, manifest, with_kept, n, seed)
    return result


def _choose(parts: list[int], max_parts: int, seed: int) -> list[int]:
    """At most `max_parts` of `parts` (the non-empty ones), a seeded choice; all of them if fewer."""
    if max_parts and len(parts) > max_parts:
        return sorted(random.Random(seed).sample(parts, max_parts))
    return parts


def _input_part(folder: Path, manifest: dict[str, Any], index: int) -> Path | None:
    """The Parquet part that output part `index` was written from (documents stages), else None."""
    inputs = manifest.get("inputs", [])
    if index >= len(inputs) or not str(inputs[index].get("path", "")).endswith(".parquet"):
        return None
    path = Path(inputs[index]["path"])
    path = path if path.is_absolute() else folder.parent / path
    return path if path.is_file() else None


def _edits(folder: Path, manifest: dict[str, Any], chosen: list[int], n: int, seed: int) -> list[Edit]:
    """Up to `n` kept documents whose text the stage changed, with their diffs."""
    smallest = _Smallest(n)
    outputs = manifest.get("outputs", [])
    for index in chosen:
        source = _input_part(folder, manifest, index)
        if source is None:
            continue
        before = read_documents(source, ["id", "text"])
        for doc in read_documents(folder / outputs[index]["path"], ["id", "text"]):
            original = next((d for d in before if d.id == doc.id), None)  # same order, rejected ones skipped
            if original is None:
                break  # not the input it came from (a reordering stage): no diffs for this part
            if original.text != doc.text and smallest.wants(key := _key(seed, doc.id)):
                smallest.offer(key, lambda: _edit(doc.id, index, original.text or "", doc.text or ""))
    return smallest.items()


def _edit(doc_id: str, part: int, before: str, after: str) -> Edit:
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", lineterm="", n=1))
    return Edit(doc_id, part, len(before), len(after), lines[:DIFF_LINES], len(lines) > DIFF_LINES)


# -- renderings ------------------------------------------------------------------------------------


def _parts_note(samples: StageSamples) -> str:
    read = len(samples.parts_read)
    return f"{read} of {samples.parts_total} parts"


def _fence(text: str) -> str:
    """A markdown code fence longer than any backtick run in `text`."""
    ticks = 3
    while "`" * ticks in text:
        ticks += 1
    return "`" * ticks


def to_markdown(samples: StageSamples) -> str:
    m = samples.manifest
    lines = [f"### {samples.stage}: what it removed and changed", "",
             f"{m.get('docs_in', 0):,} in, {m.get('docs_kept', 0):,} kept, {m.get('docs_rejected', 0):,} rejected; "
             f"samples from {_parts_note(samples)}, first {PREVIEW_CHARS} characters of each.", ""]
    if not samples.rejected:
        lines += ["No rejected documents in the parts read.", ""]
    for reason, found in samples.rejected.items():
        lines += [f"#### {reason} ({m.get('rejected_by_reason', {}).get(reason, len(found)):,} rejected)", ""]
        for s in found:
            shown = s.text if s.before is None else s.before
            fence = _fence(shown)
            note = f"{s.chars:,} characters" if s.before is None else "emptied; its text before the stage"
            lines += [f"`{s.id}` — {s.reason} ({note})", "", fence, shown, fence, ""]
    if samples.kept:
        lines += ["#### kept", ""]
        for s in samples.kept:
            fence = _fence(s.text)
            lines += [f"`{s.id}` ({s.chars:,} characters)", "", fence, s.text, fence, ""]
    if samples.edits:
        lines += ["#### edited (before/after)", ""]
        for e in samples.edits:
            body = "\n".join(e.diff) + ("\n..." if e.truncated else "")
            fence = _fence(body)
            lines += [f"`{e.id}`: {e.chars_before:,} → {e.chars_after:,} characters", "", fence + "diff", body, fence, ""]
    return "\n".join(lines)


def print_terminal(samples: StageSamples, console=None) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.text import Text

    console = console or Console()
    m = samples.manifest
    console.rule(f"[bold]{samples.stage}")
    console.print(Text(f"{m.get('docs_in', 0):,} in, {m.get('docs_kept', 0):,} kept, {m.get('docs_rejected', 0):,} "
                       f"rejected; samples from {_parts_note(samples)}"))
    for reason, found in samples.rejected.items():
        console.rule(Text(f"{reason} ({m.get('rejected_by_reason', {}).get(reason, len(found)):,} rejected)"), style="red")
        for s in found:
            shown = s.text + (" ..." if s.chars > len(s.text) else "") if s.before is None else s.before
            title = f"{s.id} — {s.reason}" + ("" if s.before is None else " (emptied; its text before the stage)")
            console.print(Panel(Text(shown), title=Text(title), title_align="left"))
    if samples.kept:
        console.rule("kept", style="green")
        for s in samples.kept:
            console.print(Panel(Text(s.text + (" ..." if s.chars > len(s.text) else "")), title=Text(s.id), title_align="left"))
    if samples.edits:
        console.rule("edited (before/after)", style="yellow")
        for e in samples.edits:
            console.print(Text(f"{e.id}: {e.chars_before:,} -> {e.chars_after:,} characters"))
            console.print(Syntax("\n".join(e.diff) + ("\n..." if e.truncated else ""), "diff", word_wrap=True))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: .6em; border-radius: 4px; }
.del { color: #a00; } .add { color: #070; } .hunk { color: #66a; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #ddd; text-align: left; }
"""


def to_html(samples: StageSamples) -> str:
    """A self-contained page (no script, no outside resource)."""
    e = html.escape
    m = samples.manifest
    counts = m.get("rejected_by_reason", {})
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(samples.stage)}: samples</title>",
           f"<style>{_STYLE}</style></head><body>",
           f"<h1>{e(samples.stage)}</h1>",
           f"<p>{m.get('docs_in', 0):,} in, {m.get('docs_kept', 0):,} kept, {m.get('docs_rejected', 0):,} rejected; "
           f"samples from {e(_parts_note(samples))}. Folder: <code>{e(samples.folder)}</code></p>",
           "<h2>Rejected, by reason</h2><table id='reasons'><tr><th>reason</th><th>documents</th><th>sampled</th></tr>"]
    for reason, found in samples.rejected.items():
        out.append(f"<tr><td><a href='#reason-{e(reason)}'>{e(reason)}</a></td><td>{counts.get(reason, 0):,}</td><td>{len(found)}</td></tr>")
    out.append("</table>")
    for reason, found in samples.rejected.items():
        out.append(f"<section class='reason' id='reason-{e(reason)}'><h3>{e(reason)}</h3>")
        for s in found:
            note = f"{s.chars:,} characters" if s.before is None else "emptied; its text before the stage"
            out.append(f"<article class='sample'><h4><code>{e(s.id)}</code> — {e(s.reason or '')} ({note})</h4>"
                       f"<pre>{e(s.text if s.before is None else s.before)}</pre></article>")
        out.append("</section>")
    if samples.kept:
        out.append("<section id='kept'><h2>Kept</h2>")
        for s in samples.kept:
            out.append(f"<article class='sample'><h4><code>{e(s.id)}</code> ({s.chars:,} characters)</h4><pre>{e(s.text)}</pre></article>")
        out.append("</section>")
    if samples.edits:
        out.append("<section id='edits'><h2>Edited (before/after)</h2>")
        for ed in samples.edits:
            rendered = []
            for line in ed.diff:
                css = "hunk" if line.startswith("@@") else "del" if line.startswith("-") else "add" if line.startswith("+") else ""
                rendered.append(f"<span class='{css}'>{e(line)}</span>" if css else e(line))
            out.append(f"<article class='edit'><h4><code>{e(ed.id)}</code>: {ed.chars_before:,} → {ed.chars_after:,} characters</h4>"
                       f"<pre class='diff'>{chr(10).join(rendered)}{chr(10) + '...' if ed.truncated else ''}</pre></article>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)
