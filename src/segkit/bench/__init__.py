"""Throughput and memory benchmarks: `python -m segkit.bench` (see conf/bench.yaml)."""
