"""GitHub: BigQuery export reader, license/extension/RedPajama filters, header removal, exact dedup."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.documents import Document, kept_parts, read_documents, rejected_parts, write_documents
from pipeline.sources.github import GithubDedup, GithubFilter, GithubIngest, strip_header_redpajama, strip_license_header
from pipeline.stage import run_stage
from tests.conftest import REALDATA

REAL_GITHUB = REALDATA / "github/github_000000000000.jsonl.gz"

CODE = "def add(left, right):\n    total = left + right\n    return total\n"


def row(path: str, content: str = CODE, repo: str = "octo/repo", license: str = "mit", **extra) -> dict:
    return {
        "repo_name": repo,
        "path": path,
        "content": content,
        "license": license,
        "id": extra.pop("id", "a" * 40),
        "size": str(len(content or "")),
        "binary": False,
        "copies": "1",
        "ref": "refs/heads/main",
        "mode": "33188",
        "language": [{"name": "Python", "bytes": "120"}],
        **extra,
    }


def gh_doc(path: str, content: str = CODE, license: str = "mit", doc_id: str | None = None) -> Document:
    return Document(
        id=doc_id or f"github/octo/repo/{path}", text=content, source="github", meta={"path": path, "license": license}
    )


def verdict(path: str, content: str = CODE, license: str = "mit", **config) -> Document:
    return GithubFilter(config)([gh_doc(path, content, license)])[0]


def write_jsonl_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# github_ingest


def test_ingest_rows_ids_meta_and_rejections(tmp_path):
    path = write_jsonl_gz(
        tmp_path / "github_000.jsonl.gz",
        [
            json.dumps(row("src/a.py", id="1" * 40)),
            json.dumps(row("src/a.py", id="2" * 40, ref="refs/heads/dev")),  # same repo/path, another blob
            json.dumps(row("logo.png", content=None, binary="true")),
            json.dumps({k: v for k, v in row("src/b.py").items() if k != "content"}),
            "{broken",
        ],
    )
    docs = list(GithubIngest().read(path))
    assert [d.reason for d in docs[:2]] == [None, None]
    assert docs[0].id == "github/octo/repo/src/a.py"
    assert docs[1].id == "github/octo/repo/src/a.py@" + "2" * 40
    assert docs[0].meta["size"] == len(CODE) and docs[0].meta["copies"] == 1  # INT64 strings parsed
    assert docs[0].meta["languages"] == ["Python"] and docs[0].meta["blob_id"] == "1" * 40
    assert docs[0].meta["license"] == "mit" and docs[0].meta["repo_name"] == "octo/repo"
    assert docs[2].reason == "binary_file"
    assert docs[3].reason == "missing_field:content"
    assert docs[4].reason.startswith("unreadable_record:")
    assert len({d.id for d in docs}) == len(docs)


def test_ingest_ids_over_parts_are_those_of_one_reader_in_row_order(tmp_path):
    """The partitioned id passes (any partition count, 1 or 2 workers) give every row the id one
    reader going through all the files in order gives: later copies of a repo/path take @blob, then
    #n; a copy without a blob id takes #n; a rejected row keeps file@line."""
    rows = [row("src/a.py", id="1" * 40), row("src/a.py", id="2" * 40), row("src/a.py", id=""),
            row("src/a.py", id="2" * 40), {k: v for k, v in row("src/a.py", id="3" * 40).items() if k != "content"},
            row("src/b.py")]
    files = [write_jsonl_gz(tmp_path / f"github_{i:03d}.jsonl.gz", [json.dumps(r) for r in rows[i:] + rows[:i]])
             for i in range(3)]
    reader = GithubIngest()
    expected = [(d.id, d.reason) for f in files for d in reader.read(f)]
    assert len({i for i, _ in expected}) == len(expected) == 18
    for partitions, workers in ((1, 1), (3, 2), (64, 1)):
        stage = GithubIngest()
        stage.partitions = partitions
        out = tmp_path / f"out-{partitions}"
        manifest = run_stage(stage, files, out, workers=workers)
        assert manifest["stats"]["rows"] == 18
        got = sorted((d.id, d.reason) for folder in ("kept", "rejected") for q in sorted((out / folder).glob("*.parquet"))
                     for d in read_documents(q))
        assert got == sorted(expected)
        assert not (out / "artifacts").exists()


def test_ingest_run_stage_with_empty_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl_gz(raw / "github_000.jsonl.gz", [json.dumps(row("a.py")), json.dumps(row("b.py", license="gpl-3.0"))])
    (raw / "github_001.jsonl").write_text("")
    manifest = run_stage(GithubIngest(), [raw], tmp_path / "ingest")
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"] == 3
    assert manifest["rejected_by_reason"] == {"empty_file": 1}
    filtered = run_stage(GithubFilter(), [tmp_path / "ingest"], tmp_path / "filter")
    assert filtered["docs_kept"] == 1 and filtered["rejected_by_reason"] == {"license": 1}


# ---------------------------------------------------------------------------------------------
# github_filter


def test_license_allow_list():
    assert verdict("a.py", license="gpl-3.0").reason == "license:gpl-3.0"
    assert verdict("a.py", license="").reason == "license:none"
    for lic in ("mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause"):
        assert verdict("a.py", license=lic).reason is None
    assert verdict("a.py", license="gpl-3.0", licenses=["gpl-3.0"]).reason is None


def test_extension_whitelist():
    assert verdict("tool.exe").reason == "extension"
    assert verdict("config/data.json").reason == "extension"
    assert verdict("LICENSE").reason == "extension"
    assert verdict("build/Makefile", "all:\n\techo building the project\n").reason is None
    assert verdict("src/main.C", "int main() { return compute_value(); }\n").reason is None  # .C is C++


def test_max_line_length():
    line = "value = " + "a" * 992  # 1000 characters
    assert verdict("a.py", CODE + line + "\n" + CODE * 40).reason is None
    assert verdict("a.py", CODE + line + "b\n" + CODE * 40).reason == "max_line_length"


def test_mean_line_length():
    line = "result_{} = compute_something_long(alpha, beta, gamma, delta) + other_value"
    long_lines = "\n".join(line.format(i) for i in range(20))
    assert verdict("a.py", long_lines).reason is None  # ~75 characters a line
    wide = "\n".join("x = " + "word " * 30 for _ in range(20))  # ~155 characters a line
    assert verdict("a.py", wide).reason == "mean_line_length"


def test_alnum_fraction():
    symbols = "# " + "=+-*/" * 10 + "\nx = 1\n" + "#" + "-" * 60 + "\n"
    assert verdict("a.py", symbols).reason == "alnum_fraction"


def test_alpha_per_token():
    numbers = "\n".join(", ".join(str(i * 7 + j) for j in range(8)) for i in range(20))
    assert verdict("table.py", "data = [\n" + numbers + "\n]\n").reason == "alpha_per_token"


def test_alpha_per_token_counts_with_a_sentencepiece_model(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((CODE * 50) + "print('hello world')\n" * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "chars"), model_type="char", vocab_size=30,
        minloglevel=2,
    )  # fmt: skip
    model = tmp_path / "chars.model"
    # word-run tokens: ~4.6 letters a token -> kept; one piece per character -> < 1.5 -> dropped
    assert verdict("a.py", CODE).reason is None
    assert verdict("a.py", CODE, tokenizer_model=str(model)).reason == "alpha_per_token"
    stage = GithubFilter({"tokenizer_model": str(model)})
    assert stage.extra_inputs() == [model]  # the model's bytes are part of the stage identity
    with pytest.raises(Exception, match="not found"):
        GithubFilter({"tokenizer_model": str(tmp_path / "missing.model")})


def test_license_header_stripped():
    header = (
        "/*\n * Copyright 2021 Someone\n *\n * Licensed under the Apache License, Version 2.0 (the \"License\");\n"
        " * you may not use this file except in compliance with the License.\n */\n\n"
    )
    body = "#include <stdio.h>\nint main(void) { return printf(\"hello\\n\"); }\n"
    out = verdict("src/hello.c", header + body)  # RedPajama's rule: the /* */ block alone is cut
    assert out.reason is None
    assert out.text == "\n\n" + body
    assert out.meta["header_chars_removed"] == len(header) - 2
    out = verdict("src/hello.c", header + body, header_rule="license_comment")  # and the blank lines after it
    assert out.text == body and out.meta["header_chars_removed"] == len(header)


def test_redpajama_header_rule():
    """rp_v1 clean_copyright_comments: the first /* */ block of the file, wherever it is, goes if it
    says "copyright", and then nothing else; without any /* */ block, every leading "//", "#", "--"
    or empty line goes, whatever it says."""
    later = "int x;\n/* Copyright 2020 X */\nint y;\n"
    assert strip_header_redpajama(later) == ("int x;\n\nint y;\n", 22)
    first_not_license = "/* helpers */\n// Copyright 2020 X\nint x;\n/* Copyright 2021 Y */\n"
    assert strip_header_redpajama(first_not_license) == (first_not_license, 0)
    py = "#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n\n# Parse the config.\nimport os\n# tail\n"
    assert strip_header_redpajama(py) == ("import os\n# tail\n", len(py) - len("import os\n# tail\n"))
    assert strip_header_redpajama("# Title\n\nText.\n")[0] == "Text.\n"  # a Markdown heading too
    assert strip_header_redpajama("-- SQL\nSELECT 1;\n")[0] == "SELECT 1;\n"
    assert strip_header_redpajama("  # indented\nx = 1\n") == ("  # indented\nx = 1\n", 0)
    # the same files under the deviation: only license text in the file's own syntax goes
    assert strip_license_header(py, "a.py") == (py, 0)
    assert verdict("README.md", "# Title\n\nSome text about the tool.\n", header_rule="license_comment").text.startswith("# Title")


def test_hash_and_slash_headers_and_what_is_kept():
    py = "#!/usr/bin/env python\n# SPDX-License-Identifier: MIT\n# (c) Someone\n\nimport os\n"
    assert strip_license_header(py, "tool.py") == ("#!/usr/bin/env python\nimport os\n", len(py) - 32)
    rs = "// Copyright 2026 Someone\n//\n// Licensed under MIT.\n\npub mod record;\n"
    assert strip_license_header(rs, "lib.rs")[0] == "pub mod record;\n"
    # a leading comment that is not a license stays
    doc_comment = "# Helpers to parse the config file.\nimport os\n"
    assert strip_license_header(doc_comment, "helpers.py") == (doc_comment, 0)
    # "#" starts a heading in Markdown, not a comment
    md = "# License\n\nMIT, see LICENSE.\n"
    assert strip_license_header(md, "README.md") == (md, 0)
    # a license block further down is not a header
    later = "import os\n# Copyright 2020 Someone\n"
    assert strip_license_header(later, "x.py") == (later, 0)


def test_file_that_is_only_a_header_is_empty():
    assert verdict("pkg/__init__.py", "# Copyright 2021 X\n# Licensed under the MIT license.\n").reason == "empty"


# ---------------------------------------------------------------------------------------------
# github_dedup


def test_duplicate_file_dropped_first_kept_across_parts(tmp_path):
    write_documents(tmp_path / "p0.parquet", [gh_doc("a.py", doc_id="github/one/a.py"), gh_doc("b.py", "other = 1\n")])
    write_documents(tmp_path / "p1.parquet", [gh_doc("c.py", doc_id="github/two/c.py"), gh_doc("d.py", CODE + " ")])
    manifest = run_stage(GithubDedup(), [tmp_path / "p0.parquet", tmp_path / "p1.parquet"], tmp_path / "out")
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"] == 4
    rejected = [d for p in rejected_parts(tmp_path / "out") for d in read_documents(p)]
    assert [(d.id, d.reason, d.meta["duplicate_of"]) for d in rejected] == [
        ("github/two/c.py", "duplicate_file", "github/one/a.py")
    ]


def test_dedup_is_the_same_bytes_whatever_the_partitions_and_workers(tmp_path):
    """The partitioned passes (pipeline/exact_dedup.py) keep the first copy of each content in part
    then row order, as one whole-input index would, for 1, 2 and 64 partitions and 1 or 2 workers."""
    contents = [f"value = {i % 7}\n" for i in range(40)]
    parts = []
    for part in range(4):
        docs = [gh_doc(f"f{part}_{row}.py", contents[(part * 10 + row * 3) % 40], doc_id=f"github/r/{part}/{row}")
                for row in range(10)]
        write_documents(tmp_path / f"p{part}.parquet", docs)
        parts.append(tmp_path / f"p{part}.parquet")
    expected, first_of = {}, {}
    for part in range(4):
        for doc in read_documents(parts[part]):
            first = first_of.setdefault(doc.text, doc.id)
            if first != doc.id:
                expected[doc.id] = first
    folders = []
    for partitions, workers in ((1, 1), (2, 2), (64, 1)):
        stage = GithubDedup()
        stage.partitions = partitions
        out = tmp_path / f"out-{partitions}"
        manifest = run_stage(stage, parts, out, workers=workers)
        assert manifest["stats"] == {"files": 40, "distinct_contents": 7, "duplicates": 33}
        folders.append({q.relative_to(out).as_posix(): q.read_bytes() for q in sorted(out.rglob("part-*.parquet"))})
        assert not (out / "artifacts").exists()  # the exchange files are not output
    assert folders[0] == folders[1] == folders[2]
    rejected = {d.id: d.meta["duplicate_of"] for p in rejected_parts(tmp_path / "out-2") for d in read_documents(p)}
    assert rejected == expected


def test_dedup_without_prepare_keeps_first_in_stream():
    out = GithubDedup()([gh_doc("a.py"), gh_doc("b.py"), gh_doc("c.py", "x = 2\n")])
    assert [d.reason for d in out] == [None, "duplicate_file", None]


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_GITHUB.is_file(), reason=f"{REAL_GITHUB} not present (shared real-data samples)")
def test_real_github_shard(tmp_path):
    ingest = run_stage(GithubIngest(), [REAL_GITHUB], tmp_path / "ingest")
    assert ingest["docs_in"] == ingest["docs_kept"] == 81

    # exact duplicates straight from the export: 4 cc_net files vendored into RedPajama-Data and
    # the Apache LICENSE shared by dolma and RedPajama-Data
    dedup_raw = run_stage(GithubDedup(), [tmp_path / "ingest"], tmp_path / "dedup_raw")
    assert dedup_raw["rejected_by_reason"] == {"duplicate_file": 5}
    dups = [d for p in rejected_parts(tmp_path / "dedup_raw") for d in read_documents(p)]
    assert {d.meta["duplicate_of"].split("/")[1] for d in dups} == {"facebookresearch", "togethercomputer"}

    filtered = run_stage(GithubFilter(), [tmp_path / "ingest"], tmp_path / "filter")
    assert filtered["docs_in"] == filtered["docs_kept"] + filtered["docs_rejected"] == 81
    rejected = [d for p in rejected_parts(tmp_path / "filter") for d in read_documents(p)]
    kenlm = [d for d in rejected if d.meta["repo_name"] == "kpu/kenlm"]
    assert len(kenlm) == 10 and {d.reason for d in kenlm} == {"license:lgpl-2.1"}
    assert {d.meta["path"] for d in rejected if d.reason == "extension"} >= {"LICENSE", "config/mine_segment.json"}
    kept = [d for p in kept_parts(tmp_path / "filter") for d in read_documents(p)]
    assert not any(d.meta["repo_name"] == "kpu/kenlm" for d in kept)
    stripped = [d for d in kept if d.meta["header_chars_removed"] > 0]
    assert stripped and not any("Licensed under the Apache License" in d.text[:400] for d in stripped)
    # RedPajama's rule (the default) is greedy: cc_net's README loses its "# cc_net" title and
    # warcio's setup.py its shebang and vim line, as rp_v1's clean_copyright_comments does.
    by_path = {(d.meta["repo_name"], d.meta["path"]): d for d in kept}
    assert by_path["facebookresearch/cc_net", "README.md"].text.startswith("Tools to download and clean Common Crawl")
    assert by_path["webrecorder/warcio", "setup.py"].text.startswith("from setuptools import setup")
    # the license_comment rule keeps them: measured, 8 of the 57 kept files differ between the rules
    # (3 Markdown titles, a Makefile comment, 3 Python shebang/doc/rule lines, a C header's blank lines)
    narrow = run_stage(GithubFilter({"header_rule": "license_comment"}), [tmp_path / "ingest"], tmp_path / "narrow")
    assert narrow["docs_kept"] == filtered["docs_kept"] == 57
    narrow_kept = {d.id: d for p in kept_parts(tmp_path / "narrow") for d in read_documents(p)}
    differ = sorted(d.meta["path"] for d in kept if d.text != narrow_kept[d.id].text)
    assert len(differ) == 8 and "setup.py" in differ and differ.count("README.md") == 2
    assert narrow_kept[by_path["webrecorder/warcio", "setup.py"].id].text.startswith("#!/usr/bin/env python")

    # after the filter, the LICENSE pair is gone (extension) and the 4 vendored cc_net files remain
    dedup = run_stage(GithubDedup(), [tmp_path / "filter"], tmp_path / "dedup")
    assert dedup["rejected_by_reason"] == {"duplicate_file": 4}
    survivors = {d.id for p in kept_parts(tmp_path / "dedup") for d in read_documents(p)}
    assert "github/facebookresearch/cc_net/cc_net/minify.py" in survivors
    assert "github/togethercomputer/RedPajama-Data/data_prep/cc/cc_net/cc_net/minify.py" not in survivors
