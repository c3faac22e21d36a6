"""The benchmark in CI size: it runs, its output has what the README's tables show (not timings), every figure comes
with the spread of its repeats, and a spread larger than the effect measured is flagged."""

import json

import pytest

from conftest import TINY_BACKBONE, compose_config
from segkit.bench.summary import spread_warnings, summarize

MODEL_KEYS = {"train_img_s", "bare_img_s", "overhead_pct", "infer_img_s", "train_peak_mb", "infer_peak_mb"}


@pytest.mark.slow
def test_model_benchmark_compares_lightning_with_a_bare_loop(tmp_path, capsys):
    from segkit.tasks.bench import run

    cfg = compose_config(
        "bench",
        [
            "batch_sizes=[2]",
            "image_sizes=[[48,64]]",
            "steps=2",
            "warmup_steps=1",
            "precisions=[bf16-mixed]",
            "channels_last=[false,true]",
            "model=fcn",
            TINY_BACKBONE,  # the figures' presence and spreads are checked, not their values
            "trainer.accelerator=cpu",
            "repeats=2",
        ],
        tmp_path,
    )
    rows = run(cfg)
    assert [(r["precision"], r["channels_last"]) for r in rows] == [("bf16-mixed", False), ("bf16-mixed", True)]
    for row in rows:
        assert MODEL_KEYS <= set(row) and all(row[k] > 0 for k in MODEL_KEYS - {"overhead_pct"})
        for key in MODEL_KEYS:  # the median of two repeats, between their min and max
            assert len(row[f"{key}_repeats"]) == 2
            assert row[f"{key}_min"] <= row[key] <= row[f"{key}_max"], key
    printed = capsys.readouterr().out
    assert "2 repeat(s)" in printed and "median over the repeats (min-max)" in printed
    assert f"({rows[0]['train_img_s_min']:.1f}-{rows[0]['train_img_s_max']:.1f})" in printed
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["rows"][0]["image_size"] == [48, 64] and saved["config"]["model"]["_target_"].endswith("FCN")
    assert saved["rows"][0]["overhead_pct_repeats"] == rows[0]["overhead_pct_repeats"]
    assert isinstance(saved["warnings"], list)


def test_data_benchmark_measures_each_worker_count(tmp_path):
    from segkit.tasks.bench import run

    cfg = compose_config("bench", ["target=data", "workers=[0,1]", "steps=3", "warmup_steps=1", "repeats=2"], tmp_path)
    rows = run(cfg)
    assert [r["workers"] for r in rows] == [0, 1] and all(r["img_s"] > 0 for r in rows)
    assert all(len(r["img_s_repeats"]) == 2 and r["img_s_min"] <= r["img_s"] <= r["img_s_max"] for r in rows)


def model_rows(*overheads: list[float]) -> list[dict]:
    """Rows as bench_model gives them, one per setting, with the given per-repeat overheads."""
    return summarize(
        [
            {
                "batch_size": 8,
                "image_size": [256, 256],
                "precision": "32-true",
                "channels_last": True,
                "overhead_pct": list(pct),
                "train_img_s": [5.0] * len(pct),
            }
            for pct in overheads
        ],
        "model",
    )


def test_a_spread_wider_than_the_overhead_is_flagged():
    # The case: +37% in one run, +4.6% in the next; the median says +20.8%, the range says nothing.
    (noisy,) = spread_warnings(model_rows([37.0, 4.6]), "model")
    assert "+20.8%" in noisy and "+4.6% to +37.0%" in noisy and "not measured" in noisy
    assert spread_warnings(model_rows([12.0, 13.5, 12.4]), "model") == []  # 1.5 points of spread, +12.4% effect
    flagged = spread_warnings(model_rows([12.0, 13.5, 12.4], [-3.0, 2.0, 1.0]), "model")
    assert len(flagged) == 1 and "+1.0%" in flagged[0]


def test_one_repeat_is_flagged_as_a_spread_unknown():
    (warning,) = spread_warnings(model_rows([37.0]), "model")
    assert "repeats=3" in warning


def test_a_worker_gain_within_the_spread_is_flagged():
    rows = summarize(
        [
            {"data": "D", "workers": 0, "batch_size": 4, "img_s": [100.0, 110.0]},
            {"data": "D", "workers": 2, "batch_size": 4, "img_s": [104.0, 112.0]},  # +3 img/s, 10 of spread
            {"data": "D", "workers": 4, "batch_size": 4, "img_s": [200.0, 210.0]},  # +100 img/s
        ],
        "data",
    )
    (warning,) = spread_warnings(rows, "data")
    assert warning.startswith("workers=2")
