"""Fuzzing every reader and the cleaners after it (issue 15), on mutated real samples.

For each reader, a seed input is cut from ../shared/realdata (real C4 pages, a real GitHub export,
a Wikipedia dump excerpt, WET/WARC records, a Gutenberg book, Books3-shaped records of Gutenberg
text, an arXiv source, a StackExchange Posts.xml). Each fuzz input is the seed with 1-3 seeded
mutations: byte flips, truncation, a deleted or duplicated range, random bytes, an injected lone
surrogate (as a JSON escape, an XML character reference or raw CESU-8 bytes), control characters,
a huge value, deep nesting; for JSON lines also a deleted field or a field of another type; and
now and then a mutation of the compressed container itself. The reader's stage runs on it
(run_stage, the stage-folder contract), then the source's cleaners on what it kept.

An input passes when nothing raises, documents in = kept + rejected in every manifest, the Parquet
parts hold exactly the manifest's rows, and every rejected row has a reason. A crash is anything
raised (a StageError too: one bad record must be a rejected row) or a child process that dies; a
hang is an input that takes longer than --timeout. Inputs run in child processes (a batch each,
restarted after a crash or hang) with an address-space limit; peak RSS is the children's largest.

    .venv/bin/python scripts/fuzz.py                     # 2,000 inputs per reader, table on stdout
    .venv/bin/python scripts/fuzz.py --inputs 40         # the reduced form tests/test_fuzz.py runs
    .venv/bin/python scripts/reliability.py --fuzz 2000  # the same, as a section of docs/RELIABILITY.md
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import os
import queue
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REALDATA = Path(os.environ.get("LLAMA_RECIPE_REALDATA", ROOT.parent / "shared" / "realdata"))
MEMORY_LIMIT = 4 << 30  # address space per child: a runaway allocation is a crash, not a swapped host


# ---------------------------------------------------------------------------------------------
# Seeds: a real sample per reader, as a payload (what mutations edit) and a wrapper (its container)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)


def _first_lines(data: bytes, n: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[:n])


def _first_records(data: bytes, marker: bytes, n: int) -> bytes:
    """`data` up to the start of its (n+1)-th `marker` (WARC records, XML pages)."""
    at, found = 0, 0
    while found <= n:
        nxt = data.find(marker, at + (1 if found else 0))
        if nxt < 0:
            return data
        at, found = nxt, found + 1
    return data[:at]


@dataclass
class Target:
    reader: str
    file_name: str
    kind: str  # jsonl, xml, text, tex, warc: which structured mutations apply
    payload: bytes
    wrap: object  # payload -> file bytes
    cleaners: list[str] = field(default_factory=list)


def targets(realdata: Path = REALDATA) -> list[Target]:
    def read(rel: str) -> bytes:
        return (realdata / rel).read_bytes()

    hott = realdata / "arxiv" / "hott-book-excerpt"
    arxiv_files = {p.name: p.read_bytes() for p in sorted(hott.iterdir()) if p.name != "main.tex"}
    wiki = bz2.decompress(read("wikipedia/enwiki-table-markup.xml.bz2"))
    head, _, _ = wiki.partition(b"  <page>")
    posts = _first_lines(read("stackexchange/coffee.stackexchange.com/Posts.xml"), 82)
    books3 = b"".join(json.dumps({"text": (realdata / "gutenberg" / "clean" / name).read_text()[:20000],
                                  "meta": {"title": name}}).encode() + b"\n"
                      for name in ("pg33956.txt", "pg10026.txt", "pg10089.txt"))
    return [
        Target("cc_ingest", "fuzz.warc.wet.gz", "warc", gzip.decompress(read("common_crawl/whirlwind.warc.wet.gz"))
               + read("common_crawl/ccnet-sample.warc.wet"), lambda p: gzip.compress(p, mtime=0),
               ["cc_doc_dedup", "cc_line_dedup", "cc_langid"]),
        Target("cc_warc_ingest", "fuzz.warc.gz", "warc",
               _first_records(gzip.decompress(read("common_crawl/whirlwind.warc.gz")), b"WARC/1.0\r\n", 6),
               lambda p: gzip.compress(p, mtime=0)),
        Target("c4_ingest", "c4-fuzz.json.gz", "jsonl", _first_lines(gzip.decompress(read("c4/c4-sample.00000-of-00001.json.gz")), 30),
               lambda p: gzip.compress(p, mtime=0), ["c4_quality"]),
        Target("github_ingest", "github-fuzz.jsonl.gz", "jsonl",
               _first_lines(gzip.decompress(read("github/github_000000000000.jsonl.gz")), 12),
               lambda p: gzip.compress(p, mtime=0), ["github_filter", "github_dedup"]),
        Target("wikipedia_ingest", "fuzz.xml.bz2", "xml", head + _first_records(wiki[len(head):], b"  <page>", 3) + b"</mediawiki>\n",
               lambda p: bz2.compress(p, 9), ["wikipedia_clean"]),
        Target("books_ingest", "pg33956.txt", "text", read("gutenberg/raw/pg33956.txt"), lambda p: p, ["books_dedup"]),
        Target("books_ingest", "books3-fuzz.jsonl.zst", "jsonl", books3, _zstd, ["books_dedup"]),
        Target("arxiv_ingest", "arxiv-fuzz.tar", "tex", (hott / "main.tex").read_bytes(),
               lambda p: _tar({"2301.00001.gz": gzip.compress(_tar(arxiv_files | {"main.tex": p}), mtime=0)}),
               ["arxiv_clean"]),
        Target("stackexchange_ingest", "Posts.xml", "xml", posts + b"</posts>\n", lambda p: p),
    ]


# ---------------------------------------------------------------------------------------------
# Mutations

SURROGATES = {"jsonl": [b"\\ud800", b"\\udfff", b"\\udc00x"], "xml": [b"&#xD800;", b"&#55296;"],
              "text": [b"\xed\xa0\x80"], "tex": [b"\xed\xa0\x80"], "warc": [b"\xed\xa0\x80"]}
CONTROLS = [b"\x00", b"\x1b[31m", b"\x07\x08", "\u2028\u2029".encode(), b"\xef\xbb\xbf", b"\r", b"\x0b\x0c",
            "\u202e".encode(), b"\xff\xfe"]
NESTING = {"jsonl": (b"[", b"]"), "xml": (b"<a>", b"</a>"), "text": (b"{{", b"}}"), "tex": (b"\\begin{x}", b"\\end{x}"),
           "warc": (b"<div>", b"</div>")}


def _type_change(rng: random.Random, payload: bytes) -> bytes:
    """JSON lines: one record loses a field, or a field gets another type (or a huge/nested value)."""
    lines = payload.splitlines(keepends=True)
    if not lines:
        return payload
    i = rng.randrange(len(lines))
    try:
        record = json.loads(lines[i])
    except ValueError:
        return payload
    if not isinstance(record, dict) or not record:
        return payload
    key = rng.choice(sorted(record))
    choice = rng.randrange(9)
    if choice == 0:
        del record[key]
    else:
        record[key] = [None, 7, 3.5, True, [record[key]], {"v": record[key]}, "x" * rng.choice([0, 1, 1 << 20]),
                       json.loads("[" * 200 + "]" * 200)][choice - 1]
    # surrogatepass: a lone surrogate already in the record goes out as CESU-8 bytes (invalid UTF-8)
    lines[i] = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass") + b"\n"
    return b"".join(lines)


def mutate(rng: random.Random, payload: bytes, kind: str) -> bytes:
    data = bytearray(payload)
    pos = rng.randrange(len(data) + 1)
    choice = rng.randrange(11 if kind == "jsonl" else 10)
    if choice == 0:  # byte flips
        for _ in range(rng.randint(1, 16)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncation
        del data[pos:]
    elif choice == 2:  # a deleted range
        del data[pos:pos + rng.randint(1, 4096)]
    elif choice == 3:  # a duplicated range
        piece = bytes(data[pos:pos + rng.randint(1, 2048)])
        data[pos:pos] = piece * rng.randint(1, 50)
    elif choice == 4:  # random bytes
        data[pos:pos] = rng.randbytes(rng.randint(1, 256))
    elif choice in (5, 6):  # a lone surrogate, in the format's own spelling
        data[pos:pos] = rng.choice(SURROGATES[kind])
    elif choice == 7:  # control and odd characters
        data[pos:pos] = rng.choice(CONTROLS) * rng.randint(1, 20)
    elif choice == 8:  # a huge value: one unbroken token, or one huge line
        data[pos:pos] = rng.choice([b"A", b"\xe6\x97\xa5", b"a ", b"\\x"]) * rng.choice([1 << 16, 1 << 20, 4 << 20])
    elif choice == 9:  # deep nesting
        opening, closing = NESTING[kind]
        depth = rng.choice([100, 10_000, 100_000])
        data[pos:pos] = opening * depth + closing * rng.choice([0, depth])
    else:
        return _type_change(rng, bytes(data))
    return bytes(data)


def fuzz_input(target: Target, seed: int, index: int) -> bytes:
    """The index-th fuzz input of a target: the same bytes for the same (seed, reader, file, index)."""
    rng = random.Random(f"{seed}/{target.reader}/{target.file_name}/{index}")
    payload = target.payload
    for _ in range(rng.choice([1, 1, 2, 3])):
        payload = mutate(rng, payload, target.kind)
    data = target.wrap(payload)
    if rng.random() < 0.15:  # the container itself: a decompressor or tar reader meets the damage
        data = mutate(rng, data, "text") if rng.random() < 0.7 else data[: rng.randrange(len(data) + 1)]
    return data


# ---------------------------------------------------------------------------------------------
# The child: runs a batch of inputs, one JSON line per input on stdout


class Hang(Exception):
    pass


def _check_folder(folder: Path) -> dict:
    import pyarrow.parquet as pq

    from pipeline.documents import read_manifest

    manifest = read_manifest(folder)
    kept = sum(pq.ParquetFile(folder / o["path"]).metadata.num_rows for o in manifest["outputs"])
    reasons: list = []
    for o in manifest["rejected_outputs"]:
        reasons += pq.read_table(folder / o["path"], columns=["reason"])["reason"].to_pylist()
    problems = []
    if manifest["docs_in"] != manifest["docs_kept"] + manifest["docs_rejected"]:
        problems.append("counts do not reconcile")
    if kept != manifest["docs_kept"] or len(reasons) != manifest["docs_rejected"]:
        problems.append("parts do not hold the manifest's rows")
    if not all(reasons):
        problems.append("a rejected row without a reason")
    return {"docs_in": manifest["docs_in"], "kept": manifest["docs_kept"], "rejected": manifest["docs_rejected"],
            "reasons": sorted(manifest["rejected_by_reason"]), "problems": problems}


def run_input(target: Target, data: bytes, work: Path) -> dict:
    from pipeline.stage import get_stage, run_stage

    work.mkdir(parents=True)
    path = work / "in" / target.file_name
    path.parent.mkdir()
    path.write_bytes(data)
    out = work / target.reader
    run_stage(get_stage(target.reader)(), [path], out)
    result = _check_folder(out)
    result["cleaned"] = []
    for cleaner in target.cleaners:
        if result["kept"] == 0 and not result["cleaned"]:
            break  # nothing for the cleaners to read
        previous, out = out, work / cleaner
        run_stage(get_stage(cleaner)(), [previous], out)
        checked = _check_folder(out)
        result["problems"] += [f"{cleaner}: {p}" for p in checked["problems"]]
        result["cleaned"].append(cleaner)
    return result


def child(target_index: int, seed: int, start: int, stop: int, work: Path, timeout: float) -> None:
    target = targets()[target_index]

    def alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    for index in range(start, stop):
        print(json.dumps({"start": index}), flush=True)
        case = work / f"input-{index}"
        data = fuzz_input(target, seed, index)  # an error here is the fuzzer's own: it stops the campaign
        verdict: dict = {"index": index, "bytes": len(data)}
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            verdict |= run_input(target, data, case)
            verdict["status"] = "fail" if verdict["problems"] else "ok"
        except Hang:
            verdict |= {"status": "hang", "detail": f"over {timeout:.0f} s"}
        except BaseException as exc:  # noqa: BLE001 - anything that escapes is what we count
            verdict |= {"status": "crash", "detail": f"{type(exc).__name__}: {exc}"[:400]}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            shutil.rmtree(case, ignore_errors=True)
        verdict["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps(verdict), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: batches in children, restarted after a crash or a hang


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def fuzz_target(target_index: int, inputs: int, seed: int, work: Path, timeout: float, batch: int = 500,
                log=print) -> dict:
    target = targets()[target_index]
    row = {"reader": target.reader, "file": target.file_name, "cleaners": target.cleaners, "inputs": 0, "ok": 0,
           "crashes": 0, "hangs": 0, "fails": 0, "peak_rss_mb": 0, "docs_in": 0, "kept": 0, "rejected": 0,
           "reasons": set(), "examples": []}
    started = time.time()
    next_index = 0
    while next_index < inputs:
        stop = min(inputs, next_index + batch)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(target_index), str(seed), str(next_index),
               str(stop), str(work), str(timeout)]
        env = os.environ | {"PYTHONPATH": str(ROOT), "TMPDIR": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=_limit_memory)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=timeout + 30)  # the child's own alarm fires first unless C code hangs
            except queue.Empty:
                proc.kill()
                _count(row, {"index": current, "status": "hang", "detail": f"child silent for {timeout + 30:.0f} s"})
                next_index = current + 1
                break
            if line is None:  # the child ended
                proc.wait()
                if current is not None:  # it died in the middle of an input
                    tail = proc.stderr.read().strip().splitlines()
                    _count(row, {"index": current, "status": "crash",
                                 "detail": f"child died (exit {proc.returncode}): {tail[-1] if tail else ''}"[:400]})
                    next_index = current + 1
                else:
                    next_index = stop
                break
            message = json.loads(line)
            if "start" in message:
                current = message["start"]
                continue
            _count(row, message)
            current = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    row["wall_s"] = round(time.time() - started, 1)
    row["reasons"] = sorted(row["reasons"])
    log(f"{target.reader:<21} {target.file_name:<22} {row['inputs']:>5} inputs  {row['crashes']} crashes  "
        f"{row['hangs']} hangs  {row['fails']} fails  peak {row['peak_rss_mb']} MB  {row['wall_s']} s")
    return row


def _count(row: dict, verdict: dict) -> None:
    row["inputs"] += 1
    status = verdict["status"]
    row[{"ok": "ok", "crash": "crashes", "hang": "hangs", "fail": "fails"}[status]] += 1
    row["peak_rss_mb"] = max(row["peak_rss_mb"], verdict.get("rss_mb", 0))
    for key in ("docs_in", "kept", "rejected"):
        row[key] += verdict.get(key, 0)
    row["reasons"].update(verdict.get("reasons", []))
    if status != "ok" and len(row["examples"]) < 5:
        row["examples"].append(f"input {verdict['index']}: {status}: {verdict.get('detail') or verdict.get('problems')}")


def campaign(inputs: int, seed: int = 0, timeout: float = 60.0, work: Path | None = None, only: str | None = None,
             log=print) -> list[dict]:
    owned = work is None
    work = work or Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        rows = []
        for i, target in enumerate(targets()):
            if only and not any(k in f"{target.reader} {target.file_name}" for k in only.split(",")):
                continue
            rows.append(fuzz_target(i, inputs, seed, work, timeout, log=log))
        return rows
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def render(rows: list[dict], command: str) -> str:
    lines = [
        "## Fuzzing the readers and their cleaners",
        "",
        f"`{command}` (the reduced form runs in `make test`: tests/test_fuzz.py). Each input is a real sample",
        "from ../shared/realdata with 1-3 seeded mutations (byte flips, truncation, deleted/duplicated ranges,",
        "random bytes, lone surrogates in the format's spelling, control characters, huge values, deep",
        "nesting; JSON lines also lose fields or get fields of other types; 15% damage the compressed",
        "container). The reader's stage runs on it, then the cleaners on what it kept. A crash is anything",
        "raised or a dead child; a hang is an input over the time limit; documents in = kept + rejected is",
        "checked in every stage folder, with the Parquet rows and a reason on every rejected row.",
        "",
        "| reader | seed file | then | inputs | crashes | hangs | ledger fails | peak RSS | docs in = kept + rejected | rejection reasons seen |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['reader']} | {r['file']} | {', '.join(r['cleaners']) or '-'} | {r['inputs']} | {r['crashes']} | "
                     f"{r['hangs']} | {r['fails']} | {r['peak_rss_mb']} MB | {r['docs_in']} = {r['kept']} + {r['rejected']} | "
                     f"{', '.join(r['reasons'][:8])}{' ...' if len(r['reasons']) > 8 else ''} |")
    examples = [e for r in rows for e in r["examples"]]
    if examples:
        lines += ["", "Failures:", ""] + [f"- {e}" for e in examples]
    return "\n".join(lines)


BEGIN, END = "<!-- fuzz: scripts/fuzz.py --doc writes from here -->", "<!-- fuzz: to here -->"


def splice(doc: Path, section: str) -> None:
    """Replace the fuzz section of a Markdown file (or put it before its "## Limits")."""
    text = doc.read_text()
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    elif "\n## Limits" in text:
        at = text.index("\n## Limits") + 1
        text = text[:at] + block + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=int, default=2000, help="mutated inputs per reader seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--only", help="comma-separated reader names or seed files")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument("--doc", type=Path, help="put the table into this Markdown file (docs/RELIABILITY.md), "
                        "replacing the section an earlier run put there")
    args = parser.parse_args()
    if args.child:
        target_index, seed, start, stop, work, timeout = args.child
        child(int(target_index), int(seed), int(start), int(stop), Path(work), float(timeout))
        return
    if not REALDATA.is_dir():
        sys.exit(f"no real samples at {REALDATA} (set LLAMA_RECIPE_REALDATA)")
    rows = campaign(args.inputs, args.seed, args.timeout, only=args.only)
    text = render(rows, f"python scripts/fuzz.py --inputs {args.inputs} --seed {args.seed}")
    if args.out:
        args.out.write_text(text + "\n")
    if args.doc:
        splice(args.doc, text)
    print(text)
    sys.exit(1 if any(r["crashes"] or r["hangs"] or r["fails"] for r in rows) else 0)


if __name__ == "__main__":
    main()
