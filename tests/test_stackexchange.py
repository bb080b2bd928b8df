"""Stack Exchange: Posts.xml -> one document per question with its answers sorted by integer score."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pytest

from pipeline.documents import kept_parts, read_documents, rejected_parts
from pipeline.sources.stackexchange import LLAMA_SITES, StackExchangeIngest, html_to_text, largest_sites, parse_tags
from pipeline.spec import load_spec
from pipeline.stage import run_stage
from tests.conftest import REALDATA

REAL_SE = REALDATA / "stackexchange/coffee.stackexchange.com/Posts.xml"


def post(post_id: int, post_type: int, body: str, **attrs) -> str:
    """One dump row; like the real dumps, newlines in attributes are written as &#xA; (a literal
    newline in an XML attribute value is normalized to a space by any parser)."""
    fields = {"Id": post_id, "PostTypeId": post_type, **attrs, "Body": body}
    attributes = " ".join(f'{k}="{escape(str(v), quote=True)}"'.replace("\n", "&#xA;") for k, v in fields.items())
    return f"  <row {attributes} />"


def posts_xml(folder: Path, rows: list[str], site: str = "cooking.stackexchange.com", close: bool = True) -> Path:
    path = folder / site / "Posts.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = '\ufeff<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
    text = header + "\n".join(rows) + ("\n</posts>\n" if close else "\n")
    path.write_text(text, encoding="utf-8")
    return path


SAMPLE_ROWS = [
    # answers before their question: the reader must still attach them
    post(11, 2, "<p>Nine points.</p>", ParentId=1, Score="9"),
    post(12, 2, "<p>Two points.</p>", ParentId=1, Score="2"),
    post(
        1,
        1,
        "<p>How do I <b>proof</b> yeast?</p><pre><code>if water &gt; 45:\n    wait()\n</code></pre>",
        Title="Proofing yeast",
        Score="5",
        Tags="<baking><yeast>",
        AcceptedAnswerId="12",
    ),
    post(13, 2, "<p>Ten points.</p><ul><li>warm water</li><li>sugar</li></ul>", ParentId=1, Score="10"),
    post(14, 2, "<p>Also nine, higher id.</p>", ParentId=1, Score="9"),
    post(2, 1, "<p>Nobody answered me.</p>", Title="Lonely question", Score="0"),
    post(15, 2, "<p>My question was deleted.</p>", ParentId=99, Score="3"),
    post(20, 4, "<p>Tag wiki excerpt.</p>"),
]


def test_answers_sorted_by_integer_score_and_html_removed(tmp_path):
    docs = list(StackExchangeIngest().read(posts_xml(tmp_path, SAMPLE_ROWS)))
    question = next(d for d in docs if d.id == "stackexchange/cooking.stackexchange.com/1")
    assert question.reason is None
    # integer order 10 > 9 > 9 > 2 (string order would put "9" before "10"); ties by answer Id
    assert question.meta["answer_ids"] == [13, 11, 14, 12]
    assert question.meta["answer_scores"] == [10, 9, 9, 2]
    text = question.text
    assert text.index("Ten points.") < text.index("Nine points.") < text.index("Also nine") < text.index("Two points.")
    assert text.startswith("Q: Proofing yeast\nHow do I proof yeast?")
    assert text.count("\n\nA: ") == 4
    assert "<p>" not in text and "<b>" not in text and "&gt;" not in text
    assert "if water > 45:\n    wait()" in text  # code block kept with its indentation
    assert "• warm water" in text  # list items stay readable
    assert question.meta["accepted_answer_id"] == 12
    assert question.meta["tags"] == ["baking", "yeast"]
    assert question.meta["site"] == "cooking.stackexchange.com" and question.meta["question_id"] == 1


def test_answers_scored_10_9_2_come_out_in_that_order(tmp_path):
    rows = [
        post(1, 1, "<p>Which grind?</p>", Title="Grind"),
        post(2, 2, "<p>Answer two.</p>", ParentId=1, Score="2"),
        post(3, 2, "<p>Answer ten.</p>", ParentId=1, Score="10"),
        post(4, 2, "<p>Answer nine.</p>", ParentId=1, Score="9"),
    ]
    (doc,) = StackExchangeIngest().read(posts_xml(tmp_path, rows))
    assert doc.text == "Q: Grind\nWhich grind?\n\nA: Answer ten.\n\nA: Answer nine.\n\nA: Answer two."
    assert doc.meta["answer_scores"] == [10, 9, 2]


def test_negative_scores_and_duplicate_question(tmp_path):
    rows = [
        post(1, 1, "<p>Q</p>", Title="T"),
        post(2, 2, "<p>minus three</p>", ParentId=1, Score="-3"),
        post(3, 2, "<p>zero</p>", ParentId=1, Score="0"),
        post(1, 1, "<p>Again</p>", Title="T"),
    ]
    docs = list(StackExchangeIngest().read(posts_xml(tmp_path, rows)))
    assert [d.reason for d in docs] == ["duplicate_post", None]
    assert docs[1].meta["answer_scores"] == [0, -3]


def test_memory_is_bounded_by_one_question(tmp_path):
    """Bodies wait on disk (SQLite), not in Python objects: reading a 12 MB site allocates far
    less than the file. tracemalloc sees Python's allocations, which is where an in-memory
    grouping of the site (the skeleton's dicts) would show."""
    import tracemalloc

    body = "<p>" + "A long line of coffee talk that goes on. " * 120 + "</p>"  # ~5 KB a post
    rows = [post(q, 1, body, Title=f"Q{q}") for q in range(1, 1001)]
    rows += [post(5000 + q, 2, body, ParentId=q, Score=str(q % 7)) for q in range(1, 1001)]
    path = posts_xml(tmp_path, rows)
    assert path.stat().st_size > 10_000_000
    tracemalloc.start()
    count = 0
    for doc in StackExchangeIngest().read(path):
        count += doc.reason is None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 1000
    assert peak < 2_000_000, peak


def test_llama1_spec_keeps_the_28_largest_sites():
    spec = load_spec(Path(__file__).resolve().parents[1] / "data_specs/llama1.yaml")
    sites = spec.sources["stackexchange"].stages["stackexchange_ingest"]["sites"]
    assert sites == list(LLAMA_SITES) and len(set(sites)) == 28
    assert sites[0] == "stackoverflow.com"


def test_largest_sites_counts_questions_and_answers(tmp_path):
    posts_xml(tmp_path, [post(1, 1, "q", Title="t"), post(2, 2, "a", ParentId=1), post(3, 4, "wiki")], site="a.com")
    posts_xml(tmp_path, [post(1, 1, "q", Title="t")] * 1 + [post(4, 5, "w")] * 3, site="b.com")
    posts_xml(tmp_path, [post(1, 1, "q", Title="t"), post(2, 1, "q", Title="u")], site="c.com")
    assert largest_sites(tmp_path, n=2) == ["a.com", "c.com"]  # tag wikis do not count


def test_every_row_is_accounted_for(tmp_path):
    docs = list(StackExchangeIngest().read(posts_xml(tmp_path, SAMPLE_ROWS)))
    reasons = {d.id.rsplit("/", 1)[1]: d.reason for d in docs}
    # the unanswered question 2 is kept, as RedPajama keeps it
    assert reasons == {"1": None, "2": None, "15": "orphan_answer", "20": "post_type:4"}
    # 8 rows = 2 questions + 5 answers (4 inside question 1, 1 orphan) + 1 tag wiki
    attached = sum(len(d.meta.get("answer_ids", [])) for d in docs)
    assert len(docs) + attached == len(SAMPLE_ROWS)


def test_min_answers_and_sites_config(tmp_path):
    path = posts_xml(tmp_path, SAMPLE_ROWS)
    lonely = next(d for d in StackExchangeIngest().read(path) if d.id.endswith("/2"))
    assert lonely.reason is None and lonely.text == "Q: Lonely question\nNobody answered me."
    assert lonely.meta["answer_ids"] == []
    docs = list(StackExchangeIngest({"min_answers": 1}).read(path))
    assert next(d for d in docs if d.id.endswith("/2")).reason == "no_answers"
    assert next(d for d in docs if d.id.endswith("/1")).reason is None
    docs = list(StackExchangeIngest({"min_answers": 5}).read(path))
    assert next(d for d in docs if d.id.endswith("/1")).reason == "too_few_answers"
    docs = list(StackExchangeIngest({"sites": ["coffee.stackexchange.com"]}).read(path))
    assert [d.reason for d in docs] == ["site_not_selected:cooking.stackexchange.com"]


def test_malformed_xml_keeps_questions_read_so_far(tmp_path):
    rows = SAMPLE_ROWS[:4] + ['  <row Id="30" PostTypeId="1" Body="unterminated']
    docs = list(StackExchangeIngest().read(posts_xml(tmp_path, rows, close=False)))
    assert docs[0].id == "stackexchange/cooking.stackexchange.com/1" and docs[0].reason is None
    assert len(docs[0].meta["answer_ids"]) == 3
    assert docs[-1].reason.startswith("malformed_xml:")
    line = int(docs[-1].reason.split(":")[1])
    assert line >= 7


def test_empty_file(tmp_path):
    path = tmp_path / "empty.stackexchange.com" / "Posts.xml"
    path.parent.mkdir()
    path.write_bytes(b"")
    assert [d.reason for d in StackExchangeIngest().read(path)] == ["empty_file"]
    no_rows = posts_xml(tmp_path, [], site="norows.stackexchange.com")
    assert [d.reason for d in StackExchangeIngest().read(no_rows)] == ["empty_file"]


def test_run_stage_end_to_end(tmp_path):
    posts_xml(tmp_path / "dump", SAMPLE_ROWS)
    small = [post(1, 1, "<p>Q?</p>", Title="T"), post(2, 2, "<p>A.</p>", ParentId=1)]
    posts_xml(tmp_path / "dump", small, site="b.com")
    manifest = run_stage(StackExchangeIngest(), [tmp_path / "dump"], tmp_path / "out")
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"] == 5
    assert manifest["docs_kept"] == 3
    assert manifest["rejected_by_reason"] == {"orphan_answer": 1, "post_type": 1}
    ids = {d.id for p in kept_parts(tmp_path / "out") for d in read_documents(p)}
    assert ids == {"stackexchange/b.com/1", "stackexchange/cooking.stackexchange.com/1", "stackexchange/cooking.stackexchange.com/2"}


def test_helpers():
    assert parse_tags("<a><b-c>") == ["a", "b-c"] and parse_tags("|a|b|") == ["a", "b"] and parse_tags(None) == []
    html = '<p>See <a href="http://x">this</a> <img src="y" alt="enter image description here"></p>'
    assert html_to_text(html) == "See this"


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_SE.is_file(), reason=f"{REAL_SE} not present (shared real-data samples)")
def test_real_coffee_dump(tmp_path):
    manifest = run_stage(StackExchangeIngest(), [REAL_SE.parent.parent], tmp_path / "out")
    kept = [d for p in kept_parts(tmp_path / "out") for d in read_documents(p)]
    rejected = [d for p in rejected_parts(tmp_path / "out") for d in read_documents(p)]
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"]
    assert "no_answers" not in manifest["rejected_by_reason"]  # RedPajama keeps unanswered questions
    questions = [d for d in kept if "question_id" in d.meta]
    assert len(questions) == len(kept) == 225
    unanswered = [d for d in kept if not d.meta["answer_ids"]]
    assert len(unanswered) == 13 and all("\n\nA: " not in d.text for d in unanswered)
    strict = run_stage(StackExchangeIngest({"min_answers": 1}), [REAL_SE.parent.parent], tmp_path / "strict")
    assert strict["docs_kept"] == 225 - 13 and strict["rejected_by_reason"]["no_answers"] == 13
    assert sum(len(d.meta["answer_ids"]) for d in kept) == 327  # every answer found its question
    assert manifest["rejected_by_reason"]["post_type"] == 40  # 20 + 20 tag-wiki rows
    assert all(d.meta["answer_scores"] == sorted(d.meta["answer_scores"], reverse=True) for d in kept)
    assert all(d.meta["site"] == "coffee.stackexchange.com" for d in kept)
    # scores crossing a digit boundary (e.g. 10 vs 9) occur in this dump and come out numerically
    assert any(max(d.meta["answer_scores"]) >= 10 and min(d.meta["answer_scores"]) < 10 for d in kept)
    assert not any("<p>" in d.text or "&lt;" in d.text for d in kept)
    first = next(d for d in kept if d.meta["question_id"] == 1)
    assert first.text.startswith("Q: How should I store whole bean coffee?")
    assert first.meta["accepted_answer_id"] == 24
