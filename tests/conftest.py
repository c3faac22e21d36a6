"""Tests never touch the network: W&B runs offline and timm/Hugging Face never download."""

import os

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from segkit.hydra_setup import register_resolvers  # noqa: E402

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
    """The environment of a command a test runs: offline, with tests/ importable (test-only callbacks), and
    without the W&B service of this pytest process, so each command starts its own as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {
        **env,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONPATH": str(ROOT / "tests"),
    }


def run_script(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python <args>` as a user runs it, in `cwd`."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=timeout
    )


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


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
