"""Throughput and memory benchmarks, run by `python bench.py` (see conf/bench.yaml)."""
