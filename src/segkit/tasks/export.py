"""Export a trained network for serving: ONNX (dynamic batch, height and width) and torch.export (.pt2), each
checked against PyTorch on inputs of several sizes before the command succeeds.

The exported graph takes float images (B, C, H, W) in [0, 1] (normalisation is inside) and returns logits
(B, num_classes, H, W). Class names and palette go into the ONNX metadata and export.json.

A network that cannot be exported for every image size (its backbone pads images: Swin, plain ViTs, windowed
models; or the exporter cannot prove its shape arithmetic for every size, or the file differs from PyTorch at
other sizes) is exported for one size, any batch, and checked at it: `image_size`, else the data's crop size.
The log says why, and export.json and the ONNX metadata give the size.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from segkit.config.checks import ConfigError
from segkit.runs.atomic import write_json
from segkit.task_kind import TaskKind
from segkit.training.module import load_module

FORMATS = ("onnx", "torch_export")
log = logging.getLogger(__name__)


def dynamic_shapes(dynamic_size: bool = True) -> dict[str, dict[int, Any]]:
    # Exported graphs hold for images of more than 32 pixels a side (a stride-32 map of one pixel would be a
    # special case to the exporter).
    dim = torch.export.Dim
    shapes = {0: dim("batch", min=1, max=4096)}
    if dynamic_size:
        shapes |= {2: dim("height", min=33, max=16384), 3: dim("width", min=33, max=16384)}
    return {"images": shapes}


def fixed_size(net: torch.nn.Module, cfg: DictConfig, data: dict) -> tuple[int, int] | None:
    """The one image size to export `net` for, when it is known not to export for every size (None: try).

    Networks whose backbone pads the images (Swin to a multiple of its patch, plain ViTs to theirs, windowed
    models to their windows) say why in `dynamic_export_problem`; tracing Swin for symbolic sizes does not
    even finish."""
    problem = getattr(net, "dynamic_export_problem", None)
    if not problem:
        return None
    size = one_size(cfg, data)
    log.warning(
        "Exporting for %dx%d images only (any batch): %s. Another size: image_size=[H,W].", size[0], size[1], problem
    )
    return size


def one_size(cfg: DictConfig, data: dict) -> tuple[int, int]:
    """`image_size` of the command, else the data's training crop (`crop_size`, or `image_size`), else 512."""
    size = cfg.get("image_size") or data.get("crop_size") or data.get("image_size") or 512
    size = [int(size)] * 2 if isinstance(size, (int, str)) else [int(v) for v in size]
    return size[0], size[1]


def export_checked(
    fmt: str,
    net: torch.nn.Module,
    cfg: DictConfig,
    metadata: dict,
    output: Path,
    shapes: list[list[int]],
    in_channels: int,
    size: tuple[int, int] | None,
) -> dict[str, Any]:
    """Export `net` in `fmt` for every image size (`size` None) or for one, and check it against PyTorch."""
    if size is None:
        # A batch of 2 at an odd size: an example of 1 (or of a multiple of 32) would be taken for a constant.
        example = torch.rand(2, in_channels, 67, 93)
    else:  # one size: the example and every check have it
        example = torch.rand(2, in_channels, *size)
        shapes = [[batch, *size] for batch, _, _ in shapes]
    size_text = "H, W" if size is None else f"{size[0]}, {size[1]}"
    task = TaskKind(metadata["task"])
    metadata = {
        **metadata,
        "input": f"images: float32 (B, C, {size_text}) in [0, 1]; normalisation is inside",
        "output": OUTPUTS[task.name].format(size=size_text),
    }
    if fmt == "onnx":
        path = export_onnx(net, example, output / "model.onnx", cfg.opset, metadata, dynamic_size=size is None)
    else:
        path = export_program(net, example, output / "model.pt2", dynamic_size=size is None)
    checks = check(net, runner(fmt, path), shapes, in_channels, task)
    worst = max(c["max_abs_diff"] for c in checks)
    entry = {
        "path": str(path),
        "image_size": None if size is None else list(size),
        "input": metadata["input"],
        "output": metadata["output"],
        "checks": checks,
        "max_abs_diff": worst,
    }
    if size is None and worst > cfg.tolerance:
        raise AssertionError(f"{path}: differs from PyTorch by {worst:.2e} (> tolerance {cfg.tolerance}).")
    return entry


def export_onnx(
    net: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, metadata: dict, dynamic_size: bool = True
) -> Path:
    import onnx

    torch.onnx.export(
        net,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        dynamic_shapes=dynamic_shapes(dynamic_size),
        dynamo=True,
        verbose=False,
        external_data=False,
    )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in metadata.items()})
    onnx.save(model, str(path))
    return path


def export_program(net: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_size: bool = True) -> Path:
    program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes(dynamic_size))
    with warnings.catch_warnings():  # about tensors sharing storage off the CPU; these weights are on it
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, path)
    return path


def runner(fmt: str, path: Path):
    """A function images -> logits (numpy) running the exported file, as a deployment would."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x.numpy()})[0]
    program = torch.export.load(path).module()
    return lambda x: program(x).detach().numpy()


OUTPUTS = {
    "multiclass": "logits: float32 (B, num_classes, {size}); argmax over dim 1 gives class ids",
    "binary": "logits: float32 (B, 1, {size}) of the positive class; sigmoid >= 0.5 (logit >= 0) marks it",
    "multilabel": "logits: float32 (B, num_classes, {size}), one per label; sigmoid >= 0.5 (logit >= 0) marks each",
}


def check(net: torch.nn.Module, run, shapes: list[list[int]], in_channels: int, task: TaskKind) -> list[dict[str, Any]]:
    """The exported file against PyTorch on `shapes`: the largest logit difference, and the share of pixels whose
    prediction (the task's, at threshold 0.5) agrees."""
    results = []
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in shapes:
        images = torch.rand(batch, in_channels, height, width, generator=generator)
        with torch.no_grad():
            expected = net(images).numpy()
        got = run(images)
        if got.shape != expected.shape:
            raise AssertionError(
                f"Exported output {got.shape} for input {tuple(images.shape)}; PyTorch gives {expected.shape}."
            )
        results.append(
            {
                "input": [batch, in_channels, height, width],
                "max_abs_diff": float(np.abs(got - expected).max()),
                "prediction_agreement": float(
                    (task.predict(torch.from_numpy(got)) == task.predict(torch.from_numpy(expected))).float().mean()
                ),
            }
        )
    return results


def export(cfg: DictConfig) -> dict[str, Any]:
    for noisy in ("onnx_ir", "onnxscript"):  # their INFO lines would bury the result
        logging.getLogger(noisy).setLevel(logging.WARNING)
    unknown = set(cfg.formats) - set(FORMATS)
    if unknown:
        raise ConfigError(
            f"formats={list(cfg.formats)}: {', '.join(sorted(unknown))} is no export format. Fix: "
            f"formats=[{','.join(FORMATS)}] or one of them."
        )
    module = load_module(cfg.ckpt_path, trusted=cfg.get("trusted_modules") or ())
    net = module.net.eval()
    data = module.hparams.data
    in_channels = int(data["in_channels"])
    shapes = [list(map(int, s)) for s in cfg.check_shapes]
    fixed = fixed_size(net, cfg, data)
    metadata = {
        "task": TaskKind.of(data).name,
        "class_names": list(data["class_names"]),
        "palette": data["palette"],
        "in_channels": in_channels,
        "ignore_index": data.get("ignore_index"),
        "checkpoint": str(cfg.ckpt_path),
    }
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {**metadata, "exports": {}}
    for fmt in cfg.formats:
        size = fixed
        if size is None:  # every size, if the exporter can trace it and the file matches PyTorch
            try:
                entry = export_checked(fmt, net, cfg, metadata, output, shapes, in_channels, None)
            except Exception as err:  # noqa: BLE001 - any failure: fall back to one size, which names its own
                size = one_size(cfg, data)
                reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                log.warning(
                    "%s: no export for every image size (%s: %s). Exporting for %dx%d images only (any "
                    "batch); another size: image_size=[H,W].",
                    fmt,
                    type(err).__name__,
                    reason,
                    *size,
                )
        if size is not None:
            entry = export_checked(fmt, net, cfg, metadata, output, shapes, in_channels, size)
        summary["exports"][fmt] = entry
        if entry["max_abs_diff"] > cfg.tolerance:
            write_json(output / "export.json", summary)
            raise AssertionError(
                f"{entry['path']}: differs from PyTorch by {entry['max_abs_diff']:.2e} (> tolerance {cfg.tolerance})."
            )
    write_json(output / "export.json", summary)
    table = Table(title=f"Exports in {output}, checked against PyTorch")
    for column in (
        "format",
        "file",
        "image size",
        "checked on BxHxW",
        "MB",
        "max |logit diff|",
        "prediction agreement",
    ):
        table.add_column(column)
    for fmt, entry in summary["exports"].items():
        path = Path(entry["path"])
        agreement = min(c["prediction_agreement"] for c in entry["checks"])
        size_mb = path.stat().st_size / 2**20
        size = "any" if entry["image_size"] is None else "x".join(map(str, entry["image_size"]))
        checked = ", ".join("x".join(map(str, c["input"][:1] + c["input"][2:])) for c in entry["checks"])
        table.add_row(
            fmt, path.name, size, checked, f"{size_mb:.1f}", f"{entry['max_abs_diff']:.1e}", f"{agreement:.4%}"
        )
    Console(width=max(Console().width, 120)).print(table)
    return summary
