"""Tests never touch the network: W&B runs offline, timm/Hugging Face never download and MLflow sends no telemetry
(albumentations' update check is off in segkit itself: tests/test_transforms.py)."""

import os

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("PYTHONHASHSEED", "0")
# Under pytest-xdist (`make test` runs `-n auto`) each worker, and each command it starts, computes on one thread:
# workers x threads stay within the cores, where oversubscribed OpenMP threads would wait on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

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
# For trainings whose assertions do not depend on the network's size (resuming, logging, task plumbing, ...): timm's
# 0.4M-parameter test ResNet, with resnet18's five feature levels at the same strides, instead of the default's 11M.
# Its optimizer steps and checkpoint saves cost a fraction of the default's; the shipped backbones are covered
# where they matter (test_module, test_decoders, test_transformer_backbones).
TINY_BACKBONE = "backbone.name=test_resnet"


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


def _run_main(script: str, args: tuple[str, ...]) -> int:
    """Runs `script` as `__main__` with `args` as its command line, in this process; returns its exit status, and
    prints what an interpreter would (a `sys.exit("message")`, an uncaught exception's traceback) to sys.stderr."""
    import runpy
    import traceback

    GlobalHydra.instance().clear()
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except Exception:  # noqa: BLE001 - what the interpreter would print, and its exit status
        traceback.print_exc()
        return 1
    return 0


def run_entry(script: str, *args: str, cwd: Path, full_error: bool = True) -> subprocess.CompletedProcess:
    """`python <script> <args>` in `cwd`, run in this process: the same entry script, Hydra and exit codes as
    `run_script` without a new interpreter's imports (six seconds each here). Use `run_forked` where the test
    needs a process of its own to end (a signal, a kill), `run_script` where it needs a fresh interpreter.
    `full_error`: HYDRA_FULL_ERROR=1, whole tracebacks (False: what a user's shell shows)."""
    import contextlib
    import io
    import logging

    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    argv, previous_cwd = list(sys.argv), os.getcwd()
    previous_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1" if full_error else "0"
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = _run_main(script, args)
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


def run_forked(script: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python <script> <args>` in `cwd`, in a fork of this process: a process of its own, which a signal or a kill
    may end (returncode -9 for SIGKILL, as `subprocess` says it), without a new interpreter's imports. Its
    output (file descriptors 1 and 2, and sys.stdout/sys.stderr) is captured; it starts from what a fresh process
    has of logging handlers, warning filters, Hydra and W&B, and exits without returning into pytest.

    The child computes on one thread: OpenMP's thread pool does not survive a fork (a child using more threads
    hangs). A test comparing its results bit for bit with runs in the test's own process uses `one_thread`.
    A command whose launcher starts its other processes itself (Lightning's DDP launcher, submitit's local one)
    runs here too. Use `run_script` where the test needs a fresh interpreter (what it prints at start-up) or
    processes started together as one command (torchrun); `start_forked` for processes that start together."""
    return wait_forked(start_forked(script, *args, cwd=cwd), timeout)


def start_forked(script: str, *args: str, cwd: Path) -> tuple[int, Any, Any]:
    """`run_forked`'s child, started and not waited for: several of them run at the same time (simultaneous
    runs). (pid, stdout file, stderr file), for `wait_forked`."""
    import tempfile

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest, whatever happens
        code = 1
        try:
            code = _forked_main(script, args, cwd, out.fileno(), err.fileno())
        finally:
            os._exit(code)
    return pid, out, err


def wait_forked(child: tuple[int, Any, Any], timeout: int = 300) -> subprocess.CompletedProcess:
    """The end of a `start_forked` child: its exit status (-N for a process ended by signal N) and output."""
    import signal
    import time

    pid, out, err = child
    with out, err:
        deadline = time.monotonic() + timeout
        while not (waited := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([str(pid)], timeout)
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return subprocess.CompletedProcess([str(pid)], os.waitstatus_to_exitcode(waited[1]), stdout, stderr)


def _forked_main(script: str, args: tuple[str, ...], cwd: Path, out: int, err: int) -> int:
    """The child of `run_forked`: its output to the files `out` and `err`, the state of a fresh process where the
    pytest process's differs, then the entry script; flushed, W&B's own service finished (its atexit hook will
    not run: the child leaves by os._exit, past pytest's)."""
    import logging
    import warnings

    os.dup2(out, 1)
    os.dup2(err, 2)
    # Not flushed: what pytest's captures hold is the parent's to write.
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    root = logging.getLogger()
    root.handlers[:] = []  # pytest's log capture; Hydra configures the run's own
    root.setLevel(logging.WARNING)
    for logger in logging.Logger.manager.loggerDict.values():  # handlers made on import, on pytest's streams
        for handler in getattr(logger, "handlers", ()):
            if type(handler) is logging.StreamHandler:
                handler.setStream(sys.stderr)
    warnings.resetwarnings()  # an interpreter's defaults, printed to stderr (pytest records and filters them)
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    warnings.simplefilter("ignore", ImportWarning)
    warnings.simplefilter("ignore", ResourceWarning)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = _print_warning
    os.environ.clear()
    os.environ.update(script_env())  # W&B starts a service of its own, as a new process would
    torch.set_num_threads(1)
    os.chdir(cwd)
    try:
        code = _run_main(script, args)
    finally:
        if "wandb" in sys.modules:
            from wandb.sdk import wandb_setup

            if wandb_setup._singleton is not None and wandb_setup._singleton._pid == os.getpid():
                wandb_setup.teardown()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` as an interpreter without pytest has it."""
    import warnings

    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


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


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`: `--dist loadscope --no-loadscope-reorder`), whole files go to the workers in
    the order collected: the files with the most trainings (tests marked `slow`) first, so that the long ones start
    early and the workers finish together, instead of one file of a few long tests running alone at the end. The
    tests of a file keep their order; a run in this process keeps pytest's."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow: dict[str, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: the files' and their tests' order otherwise


def pytest_collection_finish(session):
    """Everything imported so far (torch, Lightning, timm, Hydra: about a million objects) lives until the end:
    out of the garbage collector's sight, whose full passes over it took a fifth of the suite's CPU time, and
    untouched by it in forked children (run_forked, DataLoader workers), whose pages stay shared."""
    import gc

    gc.collect()
    gc.freeze()
