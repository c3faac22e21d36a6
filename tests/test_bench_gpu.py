"""The first-GPU suite (`make bench-gpu`, segkit.bench.gpu), checked on CPU for what a CPU can check: the exit without
CUDA, the peaks by device name, the FLOP counts, the tables' shape, the time budget, and the whole suite run tiny."""

import json

import pytest
import torch
from omegaconf import open_dict

from conftest import ROOT, compose_config, run_entry
from segkit.bench.gpu import count_flops, markdown, measure_suite, peak_tflops, suite_settings, write_report
from segkit.machine import Machine

TINY = [
    "gpu.batch_size=2",
    "gpu.image_size=[48,64]",
    "gpu.steps=2",
    "gpu.warmup_steps=1",
    "gpu.repeats=1",
    "gpu.real_run.steps=2",
    "gpu.real_run.warmup_steps=1",
    "gpu.real_run.data_root=/nonexistent",
    "gpu.models=[{name: FCN-8s-resnet18, model: fcn, backbone: resnet18}]",
]
HEADER = (
    "| model | setting | train img/s | bare loop img/s | overhead | train MFU | infer img/s | infer MFU | "
    "train peak GB | infer peak GB | note |"
)


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_entry(str(ROOT / "bench.py"), "target=gpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No CUDA GPU on this machine" in proc.stdout and "make bench-gpu" in proc.stdout
    assert not list(tmp_path.rglob("gpu_bench.*"))


@pytest.mark.parametrize(
    "name,tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", None),
        ("NVIDIA A10G", 125.0),
        ("Tesla T4", 65.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("Tesla V100-PCIE-32GB", 112.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("cpu", None),
    ],
)
def test_the_peak_comes_from_the_device_name(name, tflops):
    peak, source = peak_tflops(name)
    assert peak == tflops, source
    if tflops is None:
        assert "gpu.peak_tflops=" in source
    assert peak_tflops(name, 400) == (400.0, "gpu.peak_tflops, given")  # the command line wins


def test_flops_are_counted_per_image_forward_and_backward():
    """A multiply-add is 2 FLOPs. Backward: the gradient of each weight costs a forward's, and of each input but the
    image's too (the first layer needs no input gradient)."""
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1, bias=False)
    )
    first, second = 2 * 8 * 3 * 9 * 16 * 16, 2 * 4 * 8 * 16 * 16
    flops = count_flops(net, 3, (16, 16), torch.device("cpu"))
    assert flops == {"forward": first + second, "train_step": 2 * first + 3 * second}


def test_flops_of_a_segmentation_model(tmp_path):
    from segkit.bench.gpu import model_config
    from segkit.training.module import build_module

    cfg = compose_config("bench", TINY, tmp_path)
    net = build_module(model_config(cfg, cfg.gpu.models[0])).net
    small, large = (count_flops(net, 3, size, torch.device("cpu")) for size in ((32, 32), (64, 64)))
    assert 2 * small["forward"] < small["train_step"] < 3 * small["forward"]
    assert large["forward"] == pytest.approx(4 * small["forward"], rel=0.01)  # convolutions: by the pixel
    assert net.training  # left as it was


def fake_report() -> dict:
    def row(model, setting, **figures):
        keys = (
            "train_img_s",
            "bare_img_s",
            "overhead_pct",
            "infer_img_s",
            "train_peak_mb",
            "infer_peak_mb",
            "train_mfu_pct",
            "infer_mfu_pct",
        )
        return {"model": model, "setting": setting, "note": None, **dict.fromkeys(keys, 1.5), **figures}

    settings = ["fp32", "bf16", "bf16 + channels_last", "bf16 + channels_last + compile"]
    rows = [row(m, s) for m in ("UNet-resnet18", "FCN-8s-resnet50") for s in settings]
    rows[3] |= {"bare_img_s": None, "overhead_pct": None}  # compile: no bare loop
    rows[7] |= dict.fromkeys(
        (
            "train_img_s",
            "infer_img_s",
            "train_mfu_pct",
            "infer_mfu_pct",
            "bare_img_s",
            "overhead_pct",
            "train_peak_mb",
            "infer_peak_mb",
        )
    ) | {"note": "out of memory"}
    return {
        "device": "NVIDIA H100 80GB HBM3",
        "peak_tflops": 989.0,
        "peak_source": "H100 SXM, bf16 dense",
        "date": "2026-11-25",
        "versions": {"torch": "2.x", "lightning": "2.x", "cuda": "13.0"},
        "batch_size": 16,
        "image_size": [512, 512],
        "repeats": 2,
        "rows": rows,
        "skipped": ["UNet-resnet18, x: the time budget"],
        "flops": {
            "UNet-resnet18": {"forward": 2e10, "train_step": 6e10, "parameters": 14_300_000},
            "FCN-8s-resnet50": {"forward": 5e10, "train_step": 1.5e11, "parameters": 33_000_000},
        },
        "real_run": {
            "what": "experiment=membrane_unet",
            "precision": "bf16-mixed",
            "batch_size": 4,
            "crop_size": [256, 256],
            "num_workers": 8,
            "pin_memory": True,
            "img_s": 400.0,
            "steps": 150,
            "median_step_ms": 10.0,
            "loading_share_pct": 12.5,
            "peak_mb": 2048.0,
        },
    }


def test_the_markdown_has_a_flops_table_a_row_per_model_and_setting_and_the_real_run():
    text = markdown(fake_report())
    lines = text.splitlines()
    assert lines[0].startswith("**NVIDIA H100 80GB HBM3**") and "MFU against the peak 989 TFLOP/s" in lines[0]
    assert "| UNet-resnet18 | 14.3 M | 20.0 | 60.0 |" in lines
    table = lines[lines.index(HEADER) :]
    rows = [line for line in table[2:] if line.startswith("| ")]
    assert len(rows) == 8 and all(line.count(" | ") == HEADER.count(" | ") for line in rows)
    assert rows[0] == "| UNet-resnet18 | fp32 | 1.5 | 1.5 | +1.5% | 1.5% | 1.5 | 1.5% | 0.00 | 0.00 |  |"
    assert rows[3].split(" | ")[3:5] == ["—", "—"]  # compile: no bare loop
    assert rows[7].endswith("| out of memory |")
    assert "400.0 img/s over 150 steps, median step 10.0 ms, of which 12.5% outside the step" in text
    assert "8 loader workers, pinned memory on" in text and "- UNet-resnet18, x: the time budget" in text


def test_a_spent_budget_skips_every_measurement_but_counts_flops(tmp_path):
    cfg = compose_config("bench", [*TINY, "gpu.budget_s=0"], tmp_path)
    report = measure_suite(cfg, torch.device("cpu"), tmp_path, Machine(dynamo_problem=None, cpp_compiler="g++"))
    assert report["rows"] == [] and report["real_run"] is None
    assert len(report["skipped"]) == 5 and all("time budget" in s for s in report["skipped"])
    assert report["flops"]["FCN-8s-resnet18"]["forward"] > 0


def test_bf16_settings_are_measured_as_fp16_on_a_gpu_without_bf16(tmp_path):
    cfg = compose_config("bench", [], tmp_path)
    t4 = Machine(gpu_capability=(7, 5))
    names = [(s["name"], s["precision"]) for s in suite_settings(cfg, torch.device("cuda", 0), t4)]
    assert names == [
        ("fp32", "32-true"),
        ("fp16", "16-mixed"),
        ("fp16 + channels_last", "16-mixed"),
        ("fp16 + channels_last + compile", "16-mixed"),
    ]
    assert [s["precision"] for s in suite_settings(cfg, torch.device("cpu"), t4)][1] == "bf16-mixed"


def test_the_shipped_suite_is_the_issue_s(tmp_path):
    gpu = compose_config("bench", [], tmp_path).gpu
    assert [m.name for m in gpu.models] == ["UNet-resnet18", "UNet-efficientnet_b0", "FCN-8s-resnet50"]
    assert [(s.precision, s.channels_last, s.compile) for s in gpu.settings] == [
        ("32-true", False, False),
        ("bf16-mixed", False, False),
        ("bf16-mixed", True, False),
        ("bf16-mixed", True, True),
    ]
    assert list(gpu.image_size) == [512, 512] and gpu.budget_s < 600


@pytest.mark.slow
def test_the_suite_runs_tiny_on_cpu_and_writes_json_and_markdown(tmp_path):
    cfg = compose_config("bench", [*TINY, "gpu.peak_tflops=1"], tmp_path)
    with open_dict(cfg):
        cfg.gpu.settings = [cfg.gpu.settings[2], cfg.gpu.settings[3]]  # bf16 + channels_last, and + compile
        cfg.gpu.real_run.overrides = ["model=fcn", "data.image_size=[48,64]", "data.batch_size=2", "data.num_workers=0"]
    machine = Machine(dynamo_problem=None, cpp_compiler=None)  # compile cannot run: listed, not measured
    report = measure_suite(cfg, torch.device("cpu"), tmp_path, machine)
    assert [(r["model"], r["setting"]) for r in report["rows"]] == [("FCN-8s-resnet18", "bf16 + channels_last")]
    for row in report["rows"]:
        assert row["note"] is None
        assert all(row[k] > 0 for k in ("train_img_s", "bare_img_s", "infer_img_s", "train_mfu_pct", "infer_mfu_pct"))
        assert row["train_mfu_pct"] == pytest.approx(
            100 * row["train_img_s"] * report["flops"]["FCN-8s-resnet18"]["train_step"] / 1e12
        )
    (skipped,) = report["skipped"]
    assert "bf16 + channels_last + compile: torch.compile cannot run here" in skipped
    run = report["real_run"]
    assert run["steps"] == 2 and run["img_s"] > 0 and 0 <= run["loading_share_pct"] <= 100
    json_path, md_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["rows"][0]["train_img_s_repeats"]
    assert HEADER in md_path.read_text().splitlines()
