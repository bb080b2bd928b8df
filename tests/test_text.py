"""cc_net's normalizers (pipeline/text.py), pinned on hand-worked examples."""

import hashlib

import numpy as np

from pipeline.text import (
    UNICODE_PUNCT,
    line_hash,
    line_hashes,
    normalize_for_dedup,
    normalize_for_lm,
    strip_accents,
)


def test_dedup_normalization_lowercases_zeroes_digits_and_drops_unicode_punctuation():
    # «, », — and … are in cc_net's UNICODE_PUNCT set and are removed; ASCII "," and "!" stay.
    assert normalize_for_dedup("  Hello, World 2023! «Quoted» — yes…  ") == "hello, world 0000! quoted  yes"


def test_dedup_normalization_removes_control_characters_and_keeps_accents():
    assert normalize_for_dedup("Caf\u00e9\tBar\x7f\x85 9") == "caf\u00e9bar 0"


def test_dedup_normalization_zeroes_non_ascii_digits():
    assert normalize_for_dedup("Page １２ of ٣") == "page 00 of 0"


def test_dedup_keys_match_for_lines_that_differ_only_in_case_digits_and_typography():
    a = normalize_for_dedup("Copyright © 2021 Example Corp – all rights reserved")
    b = normalize_for_dedup("COPYRIGHT © 1999 Example Corp all rights reserved")
    assert a.replace("  ", " ") == b  # the en dash is removed, leaving its two spaces
    assert normalize_for_dedup("") == "" and normalize_for_dedup(" \t ") == ""


def test_lm_normalization_strips_accents_and_maps_punctuation_to_ascii():
    assert normalize_for_lm("Café – Ünïcode 42％ «ok»") == 'cafe - unicode 00% "ok"'
    assert normalize_for_lm("Wait… “What？”") == 'wait... "what?"'
    assert normalize_for_lm("a—b") == "a - b"


def test_strip_accents_drops_combining_marks_only():
    assert strip_accents("Ångström naïve façade") == "Angstrom naive facade"
    assert strip_accents("日本語") == "日本語"


def test_punctuation_map_is_ccnets():
    assert len(UNICODE_PUNCT) == 34  # counted in cc_net text_normalizer.py
    assert UNICODE_PUNCT["—"] == " - " and UNICODE_PUNCT["．"] == ". " and UNICODE_PUNCT["►"] == "-"


def test_line_hash_is_first_8_sha1_bytes_little_endian():
    digest = hashlib.sha1("hello world".encode()).digest()
    expected = int.from_bytes(digest[:8], "little")
    assert line_hash("hello world") == expected
    assert line_hash("hello world") != int.from_bytes(digest[:8], "big")
    # cc_net reads the same bytes with np.frombuffer(dtype=np.uint64) on a little-endian machine.
    assert int(np.frombuffer(digest[:8], dtype="<u8")[0]) == expected
    hashes = line_hashes(["hello world", "other"])
    assert hashes.dtype == np.uint64 and int(hashes[0]) == expected and hashes[0] != hashes[1]


def test_dedup_key_is_the_utf8_of_normalize_for_dedup_on_ascii_and_unicode_lines():
    from pipeline.text import dedup_key

    lines = ["  Hello, World 2023!\t(ok)\x7f ", "Caf\u00e9\tBar\x7f\x85 9", "Page １２ of ٣", "«Quoted» — yes…",
             "\x1f\x0b x \x0c", "", "   ", "ALL CAPS 0123456789 \x01\x02 end", "surrogate \udcff kept"]
    lines += [chr(c) + "a1" for c in range(0, 256)]  # every Latin-1 character, ASCII and not
    for line in lines:
        assert dedup_key(line) == normalize_for_dedup(line).encode("utf-8", "surrogatepass"), repr(line)
