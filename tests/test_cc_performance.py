"""cc_line_dedup's hash index: compact numpy structures, exact membership (issue 3 item 2).

Speed lives in bench/cc_bench.py; these tests check the structure and the in-place merge."""

import numpy as np

from pipeline.commoncrawl.line_dedup import GroupIndex


def test_group_index_is_a_sorted_uint64_array_with_one_byte_per_hash():
    rng = np.random.default_rng(0)
    index = GroupIndex()
    index.CHUNK = 64  # force the chunked in-place merge on a small input
    parts = [rng.integers(0, 5000, 3000, dtype=np.uint64) for _ in range(4)]
    for part in parts:
        index.add(part)
    everything = np.concatenate(parts)
    unique, counts = np.unique(everything, return_counts=True)
    assert index.hashes.dtype == np.uint64 and index.seen_twice.dtype == np.bool_
    assert index.size == len(unique)
    assert np.array_equal(index.hashes[: index.size], unique)
    assert np.array_equal(index.duplicates(), unique[counts >= 2])
    # 8 bytes per hash + 1 flag byte, x1.25 spare capacity at most: under issue 3's 16 bytes.
    assert index.peak_bytes <= 16 * index.size


def test_group_index_counts_a_hash_seen_once_in_two_parts_as_duplicate():
    index = GroupIndex()
    index.add(np.array([5, 7], np.uint64))
    index.add(np.array([7, 9, 9], np.uint64))
    assert index.duplicates().tolist() == [7, 9]
    assert index.hashes[: index.size].tolist() == [5, 7, 9]
