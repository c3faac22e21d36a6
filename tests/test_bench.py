"""The benchmark in CI size: it runs, and its output has what the README's tables show (not timings)."""

import json

from conftest import compose_config
from segkit.bench.__main__ import run

MODEL_KEYS = {"train_img_s", "bare_img_s", "overhead_pct", "infer_img_s", "train_peak_mb", "infer_peak_mb"}


def test_model_benchmark_compares_lightning_with_a_bare_loop(tmp_path):
    cfg = compose_config(
        "bench",
        ["batch_sizes=[2]", "image_sizes=[[48,64]]", "steps=2", "warmup_steps=1", "precisions=[32-true,bf16-mixed]",
         "channels_last=[true]", "model=fcn", "trainer.accelerator=cpu"],
        tmp_path,
    )
    rows = run(cfg)
    assert [(r["precision"], r["channels_last"]) for r in rows] == [("32-true", True), ("bf16-mixed", True)]
    for row in rows:
        assert MODEL_KEYS <= set(row) and all(row[k] > 0 for k in MODEL_KEYS - {"overhead_pct"})
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"][0]["image_size"] == [48, 64] and saved["config"]["model"]["_target_"].endswith("FCN")


def test_data_benchmark_measures_each_worker_count(tmp_path):
    cfg = compose_config("bench", ["target=data", "workers=[0,1]", "steps=3", "warmup_steps=1"], tmp_path)
    rows = run(cfg)
    assert [r["workers"] for r in rows] == [0, 1] and all(r["img_s"] > 0 for r in rows)
