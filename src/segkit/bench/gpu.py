"""The first-GPU suite: `make bench-gpu` (`python bench.py target=gpu`; its settings are conf/bench.yaml's `gpu`).

One command, under 10 minutes on a current GPU, measures what only a GPU can show and leaves `gpu_bench.json` and
`gpu_bench.md` (tables ready for docs/performance.md) in the run directory:
- each model (UNet-resnet18, UNet-efficientnet_b0, FCN-8s-resnet50) in each setting (fp32; bf16-mixed;
  + channels_last; + torch.compile) at batch x 512 x 512: training img/s under Lightning and in the bare loop (the
  framework's overhead), inference img/s and peak memory: segkit.bench.model's measurements;
- each model's FLOPs per image, counted by `torch.utils.flop_counter.FlopCounterMode` (forward; a training step is
  forward + backward), and the fraction of the GPU's peak they achieve (MFU), the peak from the device name (`PEAKS`)
  or `gpu.peak_tflops`;
- a short real training run (the membrane experiment when its data is there, else synthetic data): img/s and the
  share of each step spent outside the step itself, waiting for data.
Measurements start in order of what matters (the settings without compile, FLOPs, the real run, then compile, which
takes minutes); none starts after `gpu.budget_s`, and what is left is listed as skipped. A measurement that fails
(out of memory, a compiler error) is recorded as a note in its row, and the rest goes on.

Without CUDA it says so and measures nothing (`bench.py` exits 0).
"""

from __future__ import annotations

import copy
import datetime
import gc
import re
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from segkit.bench.measure import peak_memory_mb, reset_peak_memory
from segkit.bench.model import FIGURES, FixedBatches, measure_bare, measure_inference, measure_lightning
from segkit.bench.summary import summarize
from segkit.config.hydra_setup import CONFIG_DIR, register_resolvers
from segkit.data.dataset import collate
from segkit.machine import Machine
from segkit.runs.atomic import atomic_write_text, write_json
from segkit.training.module import build_module

# Dense (no sparsity) tensor-core peaks in TFLOP/s, bf16 with fp32 accumulation, or fp16 on GPUs without bf16;
# matched against the lower-case device name, first match wins. From NVIDIA's datasheets (the A10G's is the A10's:
# NVIDIA publishes none for it). Anything else: `gpu.peak_tflops=<TFLOP/s>`.
PEAKS: tuple[tuple[str, float, str], ...] = (
    (r"h100.*nvl", 835.0, "H100 NVL, bf16 dense"),
    (r"h100.*pcie", 756.0, "H100 PCIe, bf16 dense"),
    (r"h100", 989.0, "H100 SXM, bf16 dense"),
    (r"h200.*nvl", 835.0, "H200 NVL, bf16 dense"),
    (r"h200", 989.0, "H200 SXM, bf16 dense"),
    (r"a100", 312.0, "A100, bf16 dense"),
    (r"\bl4\b", 121.0, "L4, bf16 dense"),
    (r"a10g", 125.0, "A10G, bf16 dense (the A10's datasheet figure)"),
    (r"\ba10\b", 125.0, "A10, bf16 dense"),
    (r"rtx 4090", 165.2, "RTX 4090, bf16 dense with fp32 accumulation"),
    (r"v100s", 130.0, "V100S, fp16 dense (no bf16)"),
    (r"v100.*pcie", 112.0, "V100 PCIe, fp16 dense (no bf16)"),
    (r"v100", 125.0, "V100 SXM2, fp16 dense (no bf16)"),
    (r"\bt4\b", 65.0, "T4, fp16 dense (no bf16)"),
)

JSON_NAME, MARKDOWN_NAME = "gpu_bench.json", "gpu_bench.md"


def peak_tflops(device_name: str, given: float | None = None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it comes from): `given` (the command line) wins, else the first of `PEAKS` matching the
    device name, else (None, why)."""
    if given is not None:
        return float(given), "gpu.peak_tflops, given"
    name = device_name.lower()
    for pattern, tflops, what in PEAKS:
        if re.search(pattern, name):
            return tflops, what
    return None, f"no peak known for {device_name!r}: pass gpu.peak_tflops=<its dense bf16 TFLOP/s>"


def count_flops(net: torch.nn.Module, in_channels: int, size: tuple[int, int], device: torch.device) -> dict:
    """FLOPs per image (a multiply-add is 2) of `net` at `size`, as FlopCounterMode counts them (convolutions and
    matrix products; normalisation, activations and resizing are not counted): `forward`, and `train_step`
    (forward + backward). Counted on a batch of 2 (BatchNorm trains on no batch of 1), then halved."""
    from torch.utils.flop_counter import FlopCounterMode

    net = net.to(device)
    images = torch.rand(2, in_channels, *size, device=device)
    was_training = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(images)
    forward = counter.get_total_flops()
    net.train()
    with FlopCounterMode(display=False) as counter:
        net(images).float().sum().backward()
    train_step = counter.get_total_flops()
    net.zero_grad(set_to_none=True)
    net.train(was_training)
    return {"forward": forward / 2, "train_step": train_step / 2}


def model_config(cfg: DictConfig, entry: DictConfig) -> DictConfig:
    """The bench config with the model and backbone of one suite entry ({name, model, backbone, options}) from
    conf/model/ and conf/backbone/, and the suite's step counts."""
    out = copy.deepcopy(cfg)
    model = OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{entry.model}.yaml")
    with open_dict(out):
        out.model = OmegaConf.merge(model, entry.get("options") or {})
        out.backbone = OmegaConf.load(Path(CONFIG_DIR) / "backbone" / f"{entry.backbone}.yaml")
        out.warmup_steps = int(cfg.gpu.warmup_steps)
        out.steps = int(cfg.gpu.steps)
    return out


def suite_settings(cfg: DictConfig, device: torch.device, machine: Machine) -> list[dict[str, Any]]:
    """The settings of `gpu.settings`, bf16 measured as fp16 on a GPU without native bf16."""
    fp16 = device.type == "cuda" and not machine.gpu_bf16
    settings = []
    for item in cfg.gpu.settings:
        setting = {
            "name": str(item.name),
            "precision": str(item.precision),
            "channels_last": bool(item.channels_last),
            "compile": bool(item.compile),
        }
        if fp16 and setting["precision"].startswith("bf16"):
            setting |= {"precision": "16-mixed", "name": setting["name"].replace("bf16", "fp16")}
        settings.append(setting)
    return settings


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _attempt(measure: Callable[[], Any], device: torch.device) -> tuple[Any, str | None]:
    """(result, None), or (None, what went wrong in one line): one setting that fails leaves the others measured."""
    try:
        return measure(), None
    except torch.cuda.OutOfMemoryError:
        return None, "out of memory (lower gpu.batch_size)"
    except Exception as err:  # noqa: BLE001 - a compiler or kernel error is this setting's result, not the suite's
        return None, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300] if str(err).strip() else ''}"
    finally:
        _free(device)


def measure_setting(
    cfg: DictConfig, setting: dict[str, Any], device: torch.device, output_dir: Path, repeats: int, bare: bool = True
) -> dict[str, Any]:
    """One row: each figure of segkit.bench.model.FIGURES as a list over the repeats (the bare loop left out when
    `bare` is false); `note` says what failed."""
    batch, size = int(cfg.gpu.batch_size), tuple(int(s) for s in cfg.gpu.image_size)
    total = cfg.warmup_steps + cfg.steps
    data = FixedBatches(batch * total, batch * 2, cfg.data.in_channels, size, cfg.data.num_classes, cfg.seed)
    loader = DataLoader(
        data, batch_size=batch, shuffle=False, drop_last=True, collate_fn=collate, pin_memory=device.type == "cuda"
    )
    row: dict[str, Any] = {
        "batch_size": batch,
        "image_size": list(size),
        **setting,
        **{key: [] for key in FIGURES},
        "note": None,
    }
    for _ in range(repeats):
        train, note = _attempt(lambda: measure_lightning(cfg, loader, setting, device, output_dir), device)
        loop = None
        if note is None and bare:
            loop, note = _attempt(lambda: measure_bare(cfg, loader, setting, device), device)
        infer, infer_note = _attempt(lambda: measure_inference(cfg, data.images[:batch], setting, device), device)
        if train is not None:
            row["train_img_s"].append(batch / train[0])
            row["train_peak_mb"].append(train[1])
        if train is not None and loop is not None:
            row["bare_img_s"].append(batch / loop[0])
            row["bare_peak_mb"].append(loop[1])
            row["overhead_pct"].append(100 * (train[0] / loop[0] - 1))
        if infer is not None:
            row["infer_img_s"].append(batch / infer[0])
            row["infer_peak_mb"].append(infer[1])
        if note or infer_note:
            row["note"] = note or infer_note
            break
    return row


class LoadingShare(L.Callback):
    """Times each training step after warm-up (start of one batch to the start of the next, the device synchronised)
    and the part of it between the end of one step and the start of the next: waiting for the loader, the copy to
    the device, the loop's own work. Synchronising stops the host from running ahead of the device, so the share is
    an upper bound of the time the device waits for data."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.step_s: list[float] = []
        self.wait_s: list[float] = []
        self.images = 0
        self._start: float | None = None
        self._end: float | None = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self._now()
        if trainer.global_step > self.warmup and self._start is not None and self._end is not None:
            self.step_s.append(now - self._start)
            self.wait_s.append(now - self._end)
            self.images += len(batch["image"])
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = self._now()


def compose_train(overrides: list[str]) -> DictConfig:
    """The train config with `overrides`, composed as train.py would (inside bench.py's Hydra app, or outside)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=overrides)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def real_run(cfg: DictConfig, device: torch.device, precision: str) -> dict[str, Any]:
    """A short training run of a real datamodule (decoding, augmentation, workers) and the real module under a
    Lightning Trainer, `gpu.real_run.steps` steps after warm-up, no validation: img/s and the loading share."""
    spec = cfg.gpu.real_run
    root = Path(str(spec.data_root)).resolve()
    if (root / "image").is_dir() and (root / "label").is_dir():
        overrides, what = ["experiment=membrane_unet", f"data.root={root}"], f"experiment=membrane_unet, {root}"
    else:
        overrides = ["data.image_size=[256,256]", "data.num_workers=auto"]
        what = f"synthetic shapes (no membrane data at {root})"
    overrides += list(spec.get("overrides") or [])
    train_cfg = compose_train(overrides)
    datamodule = instantiate(train_cfg.data)
    module = build_module(train_cfg)
    warmup, steps = int(spec.warmup_steps), int(spec.steps)
    share = LoadingShare(warmup, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=warmup + steps + 1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[share],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    reset_peak_memory(device)
    trainer.fit(module, datamodule=datamodule)
    total, waiting = sum(share.step_s), sum(share.wait_s)
    ordered = sorted(share.step_s)
    return {
        "what": what,
        "overrides": overrides,
        "precision": precision,
        "steps": len(share.step_s),
        "batch_size": datamodule.batch_size,
        "crop_size": datamodule.crop_size,
        "num_workers": datamodule.num_workers,
        "pin_memory": datamodule.pin_memory,
        "img_s": share.images / total if total else None,
        "median_step_ms": 1000 * ordered[len(ordered) // 2] if ordered else None,
        "loading_share_pct": 100 * waiting / total if total else None,
        "peak_mb": peak_memory_mb(device),
    }


def measure_suite(cfg: DictConfig, device: torch.device, output_dir: Path, machine: Machine | None = None) -> dict:
    """Everything the suite measures on `device` (the tests run it on CPU, tiny): the report `write_report` saves."""
    machine = machine or Machine()
    began = time.perf_counter()
    deadline = began + float(cfg.gpu.budget_s)
    settings = suite_settings(cfg, device, machine)
    compile_problem = machine.compile_problem(device.type) if any(s["compile"] for s in settings) else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, peak_source = peak_tflops(name, cfg.gpu.get("peak_tflops"))
    repeats = max(1, int(cfg.gpu.repeats))
    report: dict[str, Any] = {
        "device": name,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "date": datetime.date.today().isoformat(),
        "versions": _versions(),
        "batch_size": int(cfg.gpu.batch_size),
        "image_size": [int(s) for s in cfg.gpu.image_size],
        "repeats": repeats,
        "flops": {},
        "rows": [],
        "real_run": None,
        "skipped": [],
    }
    models = [(entry, model_config(cfg, entry)) for entry in cfg.gpu.models]
    rows: dict[tuple[str, str], dict] = {}

    def measure(entry, model_cfg, setting) -> None:
        key = (str(entry.name), setting["name"])
        if time.perf_counter() > deadline:
            report["skipped"].append(f"{key[0]}, {key[1]}: the time budget (gpu.budget_s={cfg.gpu.budget_s}) was spent")
            return
        if setting["compile"] and compile_problem:
            report["skipped"].append(f"{key[0]}, {key[1]}: torch.compile cannot run here ({compile_problem})")
            return
        row = measure_setting(
            model_cfg, setting, device, output_dir, 1 if setting["compile"] else repeats, bare=not setting["compile"]
        )
        rows[key] = {"model": key[0], "setting": key[1], **row}

    for entry, model_cfg in models:  # what matters most first: every model without compile, and its FLOPs
        for setting in (s for s in settings if not s["compile"]):
            measure(entry, model_cfg, setting)
        net = build_module(model_cfg).net
        flops = count_flops(net, int(model_cfg.data.in_channels), tuple(report["image_size"]), device)
        report["flops"][str(entry.name)] = {**flops, "parameters": sum(p.numel() for p in net.parameters())}
        del net
        _free(device)
    mixed = next((s["precision"] for s in settings if s["precision"] != "32-true"), "32-true")
    if time.perf_counter() <= deadline:
        report["real_run"], note = _attempt(lambda: real_run(cfg, device, mixed), device)
        if note:
            report["skipped"].append(f"real training run: {note}")
    else:
        report["skipped"].append("real training run: the time budget was spent")
    for entry, model_cfg in models:
        for setting in (s for s in settings if s["compile"]):
            measure(entry, model_cfg, setting)
    order = [(str(e.name), s["name"]) for e, _ in models for s in settings]
    report["rows"] = [_with_mfu(_summarize(rows[key]), report) for key in order if key in rows]
    report["elapsed_s"] = time.perf_counter() - began
    return report


def _summarize(row: dict[str, Any]) -> dict[str, Any]:
    """Each figure's repeats as the median, min, max and the list (segkit.bench.summary.summarize); a figure with no
    value (skipped, failed) as None."""
    empty = [key for key in FIGURES if not row.get(key)]
    flat = summarize([{k: v for k, v in row.items() if k not in empty}], "model")[0]
    return flat | {key: None for key in empty}


def _with_mfu(row: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    flops, peak = report["flops"].get(row["model"]), report["peak_tflops"]
    for figure, rate, kind in (
        ("train_mfu_pct", "train_img_s", "train_step"),
        ("infer_mfu_pct", "infer_img_s", "forward"),
    ):
        ok = flops is not None and peak and row.get(rate) is not None
        row[figure] = 100 * row[rate] * flops[kind] / (peak * 1e12) if ok else None
    return row


def _versions() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _gb(megabytes: float | None) -> float | None:
    return None if megabytes is None else megabytes / 1024


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a heading line, the FLOPs table, the throughput table, the real run, what was
    skipped."""
    h, w = report["image_size"]
    versions = report["versions"]
    peak = (
        f"{report['peak_tflops']:g} TFLOP/s ({report['peak_source']})"
        if report["peak_tflops"]
        else f"unknown ({report['peak_source']})"
    )
    lines = [
        f"**{report['device']}**, {report['date']}: torch {versions['torch']}, Lightning {versions['lightning']}, "
        f"CUDA {versions['cuda']}; batch {report['batch_size']} at {h} x {w}, each figure the median of "
        f"{report['repeats']} repeat(s) (compile: 1); MFU against the peak {peak}.",
        "",
        "| model | parameters | GFLOPs / image, forward | GFLOPs / image, training step |",
        "|---|---|---|---|",
    ]
    for model, flops in report["flops"].items():
        lines.append(
            f"| {model} | {flops['parameters'] / 1e6:.1f} M | {flops['forward'] / 1e9:.1f} | "
            f"{flops['train_step'] / 1e9:.1f} |"
        )
    lines += [
        "",
        "| model | setting | train img/s | bare loop img/s | overhead | train MFU | infer img/s | infer MFU | "
        "train peak GB | infer peak GB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        cells = [
            row["model"],
            row["setting"],
            _fmt(row["train_img_s"]),
            _fmt(row["bare_img_s"]),
            "—" if row["overhead_pct"] is None else f"{row['overhead_pct']:+.1f}%",
            _fmt(row["train_mfu_pct"], 1, "%"),
            _fmt(row["infer_img_s"]),
            _fmt(row["infer_mfu_pct"], 1, "%"),
            _fmt(_gb(row["train_peak_mb"]), 2),
            _fmt(_gb(row["infer_peak_mb"]), 2),
            row.get("note") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    run = report.get("real_run")
    if run:
        crop = "x".join(map(str, run["crop_size"])) if run.get("crop_size") else "whole images"
        lines += [
            "",
            f"Real training run ({run['what']}; {run['precision']}, batch {run['batch_size']} at {crop}, "
            f"{run['num_workers']} loader workers, pinned memory {'on' if run['pin_memory'] else 'off'}): "
            f"{_fmt(run['img_s'])} img/s over {run['steps']} steps, median step {_fmt(run['median_step_ms'])} ms, "
            f"of which {_fmt(run['loading_share_pct'], 1, '%')} outside the step (waiting for data, the copy to the "
            f"GPU, the loop), peak memory {_fmt(_gb(run['peak_mb']), 2)} GB.",
        ]
    if report["skipped"]:
        lines += ["", "Not measured:", *(f"- {item}" for item in report["skipped"])]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / JSON_NAME, output_dir / MARKDOWN_NAME
    write_json(json_path, report)
    atomic_write_text(md_path, markdown(report))
    return json_path, md_path


def no_cuda_message() -> str:
    why = (
        f"this PyTorch ({torch.__version__}) is built without CUDA"
        if torch.version.cuda is None
        else "torch.cuda.is_available() is False"
    )
    return (
        f"No CUDA GPU on this machine ({why}): the GPU suite measures nothing here. Run `make bench-gpu` on a "
        "machine with an NVIDIA GPU; `make bench` measures this one."
    )


def run_suite(cfg: DictConfig) -> dict[str, Any] | None:
    """`bench.py target=gpu`: measures, writes gpu_bench.json and gpu_bench.md, prints the Markdown; without CUDA
    prints why and returns None."""
    if not torch.cuda.is_available():
        print(no_cuda_message())
        return None
    output_dir = Path(cfg.paths.output_dir)
    report = measure_suite(cfg, torch.device("cuda", 0), output_dir)
    json_path, md_path = write_report(report, output_dir)
    print(markdown(report))
    print(f"Results: {json_path} and {md_path} ({report['elapsed_s']:.0f} s)")
    return report
