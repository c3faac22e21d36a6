"""Throughput and memory measurements (model, loading, the first-GPU suite) and their summaries; the command that
runs them is segkit.tasks.bench (`python bench.py`, see conf/bench.yaml)."""
