import os

# pyarrow's default memory pool (mimalloc) keeps the pages a stage frees: reading part after part, a
# stage's resident set grew ~5 MB per part (bench/scaling_bench.py: cc_doc_dedup, 2 to 8 parts of
# 250k pages, +37 MB), where jemalloc's returns them (+9 MB). pyarrow reads this when it is first
# imported, so it is set here, before any stage module imports pyarrow (and child processes inherit
# it); a value the user set is left alone.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
