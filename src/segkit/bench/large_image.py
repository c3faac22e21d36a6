"""Benchmark of predict.py on a large image: wall time and peak RSS of the windowed path, and of the in-memory path
on smaller images, each in a child process (a table, not a test; docs/large-images.md has the measured one):

    python bench_large.py --size 20000            # `make bench-large ARGS="--size 20000"`
    python bench_large.py --size 8192 --memory-sizes 2048 4096

It writes a size x size RGB tiled TIFF (a deterministic pattern, generated and compressed a row of tiles at a time,
never held whole), saves an untrained checkpoint of a small model (the figures are about reading, blending and
writing; a larger model only adds its own time per pixel), and runs predict.py on it: with the windowed path, and
for each of `--memory-sizes` (and the same sizes windowed, for comparison) on smaller images of the same pattern.
Peak RSS is the child's own high-water mark (`/proc/<pid>/status` VmHWM, polled, and `wait4`'s ru_maxrss); the
windowed run's RSS is also sampled over its run, to show that it does not grow as the rows go down the image.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

TILE = 256
# The benchmark image is a GeoTIFF (WGS 84 / UTM zone 33N, 0.5 m pixels), so that each run also shows whether the
# mask keeps the image's georeference (transform and CRS: its GeoTIFF tags).
GEO_KEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
GEO_TAGS = [
    (33550, "d", 3, (0.5, 0.5, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 5300000.0, 0.0), True),
    (34735, "H", len(GEO_KEYS), GEO_KEYS, True),
    (34737, "s", 0, "WGS 84 / UTM zone 33N|", True),
]


def pattern(y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """The benchmark image's pixels at (y0, x0): smooth waves and a checkerboard of 300-pixel squares, uint8 RGB,
    the same wherever it is cut (so every size shows the same kind of picture)."""
    y, x = np.mgrid[y0 : y0 + height, x0 : x0 + width].astype(np.float32)
    waves = np.stack([np.sin(x / (37.0 + 11 * c)) * np.cos(y / (29.0 + 7 * c)) for c in range(3)], axis=-1)
    squares = (((y // 300) + (x // 300)) % 2)[..., None] * 60
    return np.clip((waves + 1) * 90 + squares, 0, 255).astype(np.uint8)


def write_image(path: Path, height: int, width: int) -> Path:
    """A tiled, zlib-compressed RGB GeoTIFF of `pattern`, written tile by tile (a row of tiles in memory at most)."""

    def tiles():
        for y in range(0, height, TILE):
            row = pattern(y, 0, TILE, width + TILE)  # padded: edge tiles are whole
            for x in range(0, width, TILE):
                yield np.ascontiguousarray(row[:, x : x + TILE])

    if not path.exists():
        bigtiff = height * width * 3 > 2**31
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
            tif.write(
                tiles(),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                extratags=GEO_TAGS,
            )
    return path


def classes(y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """The benchmark's labels at (y0, x0): 4 classes from the pattern's squares and its first wave, uint8."""
    y, x = np.mgrid[y0 : y0 + height, x0 : x0 + width].astype(np.float32)
    squares = (((y // 300) + (x // 300)) % 2).astype(np.uint8)
    return squares * 2 + (np.sin(x / 37.0) * np.cos(y / 29.0) > 0).astype(np.uint8)


def write_labelled(root: Path, image: Path, height: int, width: int) -> Path:
    """A test split of one image for evaluate.py (data=folder, split_by=folders): `image` linked in, its mask a
    tiled TIFF of `classes` written a row of tiles at a time."""
    (root / "images/test").mkdir(parents=True, exist_ok=True)
    (root / "masks/test").mkdir(parents=True, exist_ok=True)
    link = root / "images/test" / image.name
    if not link.exists():
        link.symlink_to(image.resolve())
    mask = root / "masks/test" / image.name

    def tiles():
        for y in range(0, height, TILE):
            row = classes(y, 0, TILE, width + TILE)
            for x in range(0, width, TILE):
                yield np.ascontiguousarray(row[:, x : x + TILE])

    if not mask.exists():
        with tifffile.TiffWriter(mask, bigtiff=height * width > 2**31) as tif:
            tif.write(tiles(), shape=(height, width), dtype=np.uint8, tile=(TILE, TILE), compression="zlib")
    return root


def georeference(path: Path) -> dict | None:
    """A GeoTIFF's georeference as tifffile reads it (transform and CRS keys); None for no file or no GeoTIFF."""
    if not path.is_file():
        return None
    with tifffile.TiffFile(path) as tif:
        return tif.pages[0].geotiff_tags or None


def save_checkpoint(path: Path, overrides: list[str]) -> Path:
    """An untrained checkpoint of the train config with `overrides`, as train.py's would hold it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from segkit.config.hydra_setup import CONFIG_DIR, register_resolvers
    from segkit.training.module import build_module, save_module

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return save_module(build_module(cfg), path)


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(command: list[str], cwd: Path, every: float = 0.5) -> dict:
    """Runs `command`; its wall time, peak RSS (MB) and RSS samples [(seconds, MB)]; raises if it fails."""
    start = time.perf_counter()
    log = open(cwd / "child.log", "ab")  # noqa: SIM115  (closed below)
    child = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    samples, peak_kb = [], 0
    while True:
        done, status, usage = os.wait4(child.pid, os.WNOHANG)
        if done:
            break
        rss, hwm = _status_kb(child.pid, "VmRSS:"), _status_kb(child.pid, "VmHWM:")
        if rss is not None:
            samples.append((time.perf_counter() - start, rss / 1024))
        peak_kb = max(peak_kb, hwm or 0)
        time.sleep(every)
    child.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}); see {cwd / 'child.log'}")
    return {
        "seconds": time.perf_counter() - start,
        "peak_mb": max(peak_kb, usage.ru_maxrss) / 1024,
        "samples": samples,
    }


def command(script: str, checkpoint: Path, output: Path, window_above: int, args: argparse.Namespace) -> list:
    """`script` (predict.py or evaluate.py) on the benchmark's checkpoint, with the windows, blend, device and
    `window_above` every run shares; each command adds its own overrides."""
    return [
        sys.executable,
        str(Path(__file__).resolve().parents[3] / script),
        f"ckpt_path={checkpoint}",
        f"paths.log_dir={output.parent / 'logs'}",
        f"trainer.accelerator={args.accelerator}",
        "inference=slide",
        f"inference.crop_size=[{args.crop},{args.crop}]",
        f"inference.blend={args.blend}",
        f"inference.window_above={window_above}",
    ]


def predict_command(checkpoint: Path, image: Path, output: Path, window_above: int, args: argparse.Namespace) -> list:
    return [
        *command("predict.py", checkpoint, output, window_above, args),
        f"input={image}",
        f"output={output}",
        "num_workers=0",
        "overlays=false",
        f"batch_size={args.batch_size}",
    ]


# evaluate.py's data: a data=folder test split alone, images/test/<name> and masks/test/<name>.tif under data.root.
TEST_SPLIT = [
    "split=test",
    "data=folder",
    "data.split_by=folders",
    "data.splits={train:null,val:null,test:test}",
    "data.mask_suffix=.tif",
]


def evaluate_command(checkpoint: Path, root: Path, output: Path, window_above: int, args: argparse.Namespace) -> list:
    """evaluate.py on `root`'s test split with the class facts of the benchmark's checkpoint (the synthetic data's)."""
    return [
        *command("evaluate.py", checkpoint, output, window_above, args),
        *TEST_SPLIT,
        f"data.root={root}",
        "data.num_classes=4",
        "data.class_names=[background,disc,square,triangle]",
        "data.palette=[[0,0,0],[230,25,75],[60,180,75],[0,130,200]]",
        "data.num_workers=0",
        f"hydra.run.dir={output}",
    ]


def quarters(samples: list[tuple[float, float]]) -> str:
    """The RSS (MB) at a quarter, half, three quarters and the end of the run's samples."""
    if not samples:
        return "-"
    picks = [samples[min(len(samples) - 1, int(len(samples) * q))][1] for q in (0.25, 0.5, 0.75, 1.0)]
    return " / ".join(f"{mb:.0f}" for mb in picks)


def main(argv: list[str] | None = None) -> list[dict]:
    """Parses the command line (`--help`), measures, prints one line per run and then the table; returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="side of the large image, windowed (pixels)")
    parser.add_argument("--height", type=int, default=None, help="the large image's height (default: --size)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[2048, 4096], help="in-memory comparisons")
    parser.add_argument("--crop", type=int, default=512, help="window side (stride: two thirds of it)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--blend", default="gaussian", choices=["mean", "gaussian", "linear"])
    parser.add_argument("--model", default="fcn", help="model config group")
    parser.add_argument("--backbone", default="test_convnext", help="timm name (small: the model is not measured)")
    parser.add_argument("--accelerator", default="auto", help="trainer.accelerator of the child runs")
    parser.add_argument("--evaluate", action="store_true", help="also evaluate.py on each image, with a mask")
    parser.add_argument("--workdir", type=Path, default=None, help="where images and outputs go (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="segkit-large-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = save_checkpoint(
        workdir / "model.ckpt", [f"model={args.model}", f"backbone.name={args.backbone}", "backbone.pretrained=false"]
    )
    runs = [(256, 256, "start-up")]  # a 256 x 256 image: what any run pays for imports and the model
    runs += [(size, size, "in memory") for size in args.memory_sizes]
    runs += [(size, size, "windowed") for size in args.memory_sizes if size != args.size]
    runs += [(args.size, args.height or args.size, "windowed")]
    rows = []
    for width, height, path in runs:
        started = time.perf_counter()
        image = write_image(workdir / f"scene_{width}x{height}.tif", height, width)
        generated = time.perf_counter() - started
        output = workdir / f"out_{width}x{height}_{path.replace(' ', '_')}"
        pixels = width * height  # windowed: more pixels than window_above^2; in memory: fewer
        window_above = int(pixels**0.5) - 1 if path == "windowed" else int(pixels**0.5) + 1
        result = measure(predict_command(checkpoint, image, output, window_above, args), workdir)
        row = {"width": width, "height": height, "path": path, **result, "generated_s": generated}
        row["georeference"] = georeference(image) == georeference(output / "masks" / image.name)
        rows.append(row)
        print(
            f"{path:>9} {width:>6} x {height:<6} {result['seconds']:8.1f} s  peak RSS {result['peak_mb']:7.0f} MB  "
            f"RSS at 1/4, 1/2, 3/4, end: {quarters(result['samples'])} MB"
            + ("  (the mask keeps the image's georeference)" if row["georeference"] else ""),
            flush=True,
        )
        if args.evaluate and path != "start-up":
            labelled = write_labelled(workdir / f"labelled_{width}x{height}", image, height, width)
            scored = output.with_name(output.name + "_evaluate")
            result = measure(evaluate_command(checkpoint, labelled, scored, window_above, args), workdir)
            rows.append({"width": width, "height": height, "path": f"evaluate, {path}", **result})
            print(
                f"evaluate, {path} {width} x {height} {result['seconds']:.1f} s  peak RSS {result['peak_mb']:.0f} MB",
                flush=True,
            )
    cpu = platform.processor() or platform.machine()
    print(
        f"\npredict.py (and evaluate.py), {args.model} on {args.backbone} (untrained), windows {args.crop} every "
        f"{2 * args.crop // 3}, "
        f"blend {args.blend}, batch {args.batch_size}; {os.cpu_count()} cores ({cpu}), torch threads default\n"
    )
    start_up = rows[0]["seconds"]
    print("| image | path | wall time | peak RSS | s per Mpx after start-up | RSS at 1/4, 1/2, 3/4, end of the run |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        mpx = row["width"] * row["height"] / 1e6
        rate = "-" if row["path"] == "start-up" else f"{(row['seconds'] - start_up) / mpx:.2f}"
        print(
            f"| {row['width']} x {row['height']} ({mpx:.1f} Mpx) | {row['path']} | {row['seconds']:.1f} s | "
            f"{row['peak_mb']:.0f} MB | {rate} | {quarters(row['samples'])} MB |"
        )
    return rows
