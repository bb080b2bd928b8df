import pipeline  # noqa: F401  (chooses pyarrow's memory pool before anything imports pyarrow)
