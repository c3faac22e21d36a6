"""Tests never touch the network: W&B runs offline and timm/Hugging Face never download."""

import os

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")
# Under pytest-xdist (`make test` runs `-n auto`) each worker, and each command it starts, computes on one thread:
# workers x threads stay within the cores, where oversubscribed OpenMP threads would wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from segkit.config.hydra_setup import register_resolvers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small and not a multiple of 32, so every run also checks odd sizes.
TINY_DATA = [
    "data.image_size=[40,56]",
    "data.num_train=8",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=4",
    "data.eval_batch_size=4",
]


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose like the entry scripts do, with the run directory pointed at `output_dir`."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def script_env() -> dict[str, str]:
    """The environment of a command a test runs: offline, with tests/ importable (test-only callbacks, in
    tests/helpers) before the caller's own PYTHONPATH, and without the W&B service of this pytest process, so each
    command starts its own as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {
        **env,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])),
    }


def run_script(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python <args>` as a user runs it, in `cwd`."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=timeout
    )


def run_entry(script: str, *args: str, cwd: Path, full_error: bool = True) -> subprocess.CompletedProcess:
    """`python <script> <args>` in `cwd`, run in this process: the same entry script, Hydra and exit codes as
    `run_script` without a new interpreter's imports (six seconds each here). Use `run_script` where the test
    needs a process of its own (signals, several processes, what a console shows of warnings). `full_error`:
    HYDRA_FULL_ERROR=1, whole tracebacks (False: what a user's shell shows)."""
    import contextlib
    import io
    import logging
    import runpy
    import traceback

    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    argv, previous_cwd = list(sys.argv), os.getcwd()
    code = 0
    GlobalHydra.instance().clear()
    previous_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1" if full_error else "0"
    try:
        os.chdir(cwd)
        sys.argv = [script, *args]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as stop:
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception:  # noqa: BLE001 - what the interpreter would print, and its exit status
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        os.chdir(previous_cwd)
        if previous_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous_full_error
        GlobalHydra.instance().clear()
        for handler in set(root.handlers) - set(handlers):  # the run's log file and console handlers
            handler.close()
        root.handlers[:], root.level = handlers, level
    return subprocess.CompletedProcess([script, *args], code, stdout.getvalue(), stderr.getvalue())


def compose_with_hydra(*overrides: str) -> DictConfig:
    """The train config as `train.py -m <overrides>` composes it, `hydra` node included and unresolved (its
    sweeper and launcher resolve against the whole)."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def tiny_train_config(output_dir: Path, *overrides: str) -> DictConfig:
    """A train config for seconds-long CPU runs: tiny data, one epoch, CSV logger, no test."""
    base = TINY_DATA + ["logger=csv", "trainer.max_epochs=1", "test=false", "trainer.accelerator=cpu"]
    return compose_config("train", base + list(overrides), output_dir)


@pytest.fixture
def tiny_train_cfg(tmp_path):
    """A factory: `tiny_train_cfg(*overrides)` -> `tiny_train_config` in this test's tmp_path."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return tiny_train_config(output_dir or tmp_path / "run", *overrides)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[DictConfig, Path, dict]:
    """One short real training, shared by every test that only reads its results: (config, run directory, the
    metrics train() returned). 2 epochs of the tiny data, CSV + offline W&B, the test split scored after fitting.
    Never write into its run directory: copy what a test must change."""
    from segkit.tasks.train import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_config(
        "train", TINY_DATA + ["trainer.max_epochs=2", "trainer.accelerator=cpu", "logger=wandb", "test=true"], run_dir
    )
    return cfg, run_dir, train(cfg)


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """For a file of tiny networks: one thread runs them faster than two, and far faster on a loaded machine, where
    two threads wait on each other at every op. `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
