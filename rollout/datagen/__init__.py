"""The data: the intent generator (``intents``), the dataset builder with its splits and
tokenizer (``dataset``, ``tinycompress data``) and the corrupted programs that test the
validator's error codes (``corrupt``). Deterministic by seed, written as Parquet.
"""
