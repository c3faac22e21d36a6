"""Device settings a machine cannot run fail at start-up, naming the fix; what has one meaning here is adapted with a
log line (segkit.config.devices). The machine's facts are passed in (`Machine(cuda_devices=...)`) or CUDA is
monkeypatched, so every GPU case is checked on CPU. Plus `data.num_workers=auto`. The CPU rehearsal of DDP
(`trainer=ddp trainer.accelerator=cpu trainer.devices=2`) trains in test_train.py's DDP test."""

import logging
import time

import pytest
import torch
from hydra.utils import instantiate

from conftest import ROOT, TINY_DATA, compose_config, run_entry
from segkit.config.checks import ConfigError, validate
from segkit.config.devices import DeviceError, check_devices
from segkit.machine import Machine, auto_num_workers, default_pin_memory

CPU = dict(cuda_devices=0, mps=False, cpus=2, cpu_bf16=True, dynamo_problem=None, cpp_compiler="g++")
A100 = dict(CPU, cuda_devices=2, gpu_name="NVIDIA A100-SXM4-80GB", gpu_capability=(8, 0), triton=True, cpus=16)
T4 = dict(A100, cuda_devices=1, gpu_name="Tesla T4", gpu_capability=(7, 5))
P100 = dict(A100, cuda_devices=1, gpu_name="Tesla P100-PCIE-16GB", gpu_capability=(6, 0))


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    """Each test starts outside any distributed launch (no torchrun or SLURM counts and ranks)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)


def train_cfg(tmp_path, *overrides):
    return validate(compose_config("train", list(overrides), tmp_path / "run"), "train")


def refused(cfg, **facts) -> str:
    start = time.perf_counter()
    with pytest.raises(DeviceError) as caught:
        check_devices(cfg, Machine(**facts))
    assert time.perf_counter() - start < 5  # no model, data or process was touched
    assert isinstance(caught.value, ConfigError)  # entry scripts treat it as any config mistake
    return str(caught.value)


# ------------------------------------------------------------------------------------------------ refused


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_without_cuda_names_the_cpu_override(tmp_path, trainer):
    message = refused(train_cfg(tmp_path, f"trainer={trainer}"), **CPU)
    assert message.startswith("Device setting error:\n  - trainer.accelerator=gpu")
    assert "this machine has no CUDA GPU" in message and "Fix: add trainer.accelerator=cpu" in message


def test_the_real_machine_facts_follow_torch_cuda(tmp_path, monkeypatch):
    """Without facts passed in, Machine asks torch.cuda: here monkeypatched to a 2-GPU machine, then to none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    with pytest.raises(DeviceError, match=r"asks for 4 GPUs, but this machine has 2 \(NVIDIA A100-SXM4-80GB\)"):
        check_devices(train_cfg(tmp_path, "trainer=gpu", "trainer.devices=4"))
    cfg = check_devices(train_cfg(tmp_path, "trainer=ddp"))
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.sync_batchnorm is True  # an Ampere GPU keeps both
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="trainer.accelerator=cpu"):
        check_devices(train_cfg(tmp_path, "trainer=gpu"))


@pytest.mark.parametrize(
    "devices,expected",
    [
        (
            "4",
            "trainer.devices=4 asks for 4 GPUs, but this machine has 2 (NVIDIA A100-SXM4-80GB). Fix: trainer.devices=2 "
            "(or trainer.devices=auto: every GPU there is).",
        ),
        ("[0,3]", "trainer.devices=[0, 3] names GPU 3, but this machine has 2 (ids 0..1). Fix: trainer.devices=2"),
        ("'1,2'", "trainer.devices=1,2 names GPU 2, but this machine has 2"),
    ],
)
def test_more_gpus_than_the_machine_has(tmp_path, devices, expected):
    assert expected in refused(train_cfg(tmp_path, "trainer=gpu", f"trainer.devices={devices}"), **A100)


def test_gpu_counts_the_machine_has_pass(tmp_path):
    for devices in ("2", "auto", "-1", "[1]", "'0,1'"):
        check_devices(train_cfg(tmp_path, "trainer=ddp", f"trainer.devices={devices}"), Machine(**A100))


def test_device_ids_on_cpu_are_refused_and_a_count_above_the_cores_is_warned_about(tmp_path, caplog):
    message = refused(train_cfg(tmp_path, "trainer.accelerator=cpu", "trainer.devices=[0,1]"), **CPU)
    assert "on CPU trainer.devices is a number of processes. Fix: trainer.devices=2." in message
    with caplog.at_level(logging.WARNING, logger="segkit.config.devices"):
        check_devices(train_cfg(tmp_path, "trainer.accelerator=cpu", "trainer.devices=3"), Machine(**CPU))
    assert "starts 3 CPU processes on 2 usable cores" in caplog.text and "Fix: trainer.devices=2" in caplog.text


@pytest.mark.parametrize(
    "overrides,facts",
    [
        (["trainer.precision=16-mixed"], CPU),  # accelerator auto on a machine without GPU
        (["trainer=gpu", "trainer.accelerator=cpu", "trainer.precision=16-mixed"], A100),  # CPU chosen on a GPU machine
        (["trainer.accelerator=cpu", "trainer.precision=16"], CPU),
    ],
)
def test_16_mixed_on_cpu_is_refused_with_both_alternatives(tmp_path, overrides, facts):
    message = refused(train_cfg(tmp_path, *overrides), **facts)
    assert "needs a CUDA GPU; on CPU Lightning would silently run bf16-mixed instead" in message
    assert "Fix: trainer.precision=bf16-mixed (mixed precision on CPU) or trainer.precision=32-true." in message


@pytest.mark.parametrize(
    "overrides,facts,expected",
    [
        (["trainer.accelerator=cpu"], dict(CPU, cpp_compiler=None), "its CPU backend needs a C++ compiler"),
        (
            ["trainer=gpu"],
            P100,
            "its GPU backend (Triton) needs CUDA capability 7.0 or newer, and Tesla P100-PCIE-16GB has 6.0",
        ),
        (["trainer=gpu"], dict(A100, triton=False), "its GPU backend needs the triton package"),
        (
            ["trainer.accelerator=cpu"],
            dict(CPU, dynamo_problem="Python 3.15+ not yet supported for torch.compile"),
            "torch.compile does not support this set-up (Python 3.15+",
        ),
    ],
)
def test_compile_on_an_unsupported_set_up(tmp_path, overrides, facts, expected):
    message = refused(train_cfg(tmp_path, *overrides, "model.compile=true"), **facts)
    assert f"model.compile=true cannot run here: {expected}" in message and "Fix: model.compile=false." in message


def test_compile_where_it_can_run_passes(tmp_path):
    check_devices(train_cfg(tmp_path, "trainer.accelerator=cpu", "model.compile=true"), Machine(**CPU))
    check_devices(train_cfg(tmp_path, "trainer=gpu", "model.compile=true"), Machine(**T4))


def test_every_problem_is_listed_at_once(tmp_path):
    message = refused(train_cfg(tmp_path, "trainer=gpu", "trainer.devices=3", "model.compile=true"), **P100)
    assert message.startswith("2 device setting errors:") and "trainer.devices=3" in message and "compile" in message


# ------------------------------------------------------------------------------------------------ adapted


def test_sync_batchnorm_on_cpu_is_turned_off_with_one_log_line(tmp_path, caplog):
    cfg = train_cfg(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    with caplog.at_level(logging.INFO, logger="segkit.config.devices"):
        check_devices(cfg, Machine(**CPU))
    assert cfg.trainer.sync_batchnorm is False
    (record,) = [r for r in caplog.records if "sync_batchnorm" in r.getMessage()]
    assert "needs CUDA GPUs" in record.getMessage() and "turned off" in record.getMessage()


def test_adaptations_are_said_by_the_first_process_only(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = train_cfg(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    with caplog.at_level(logging.INFO, logger="segkit.config.devices"):
        check_devices(cfg, Machine(**CPU))
    assert cfg.trainer.sync_batchnorm is False and caplog.records == []


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_without_native_bf16_gets_16_mixed(tmp_path, caplog, trainer):
    cfg = train_cfg(tmp_path, f"trainer={trainer}")
    with caplog.at_level(logging.INFO, logger="segkit.config.devices"):
        check_devices(cfg, Machine(**T4))
    assert cfg.trainer.precision == "16-mixed"
    assert (
        "Tesla T4 (CUDA capability 7.5) has no native bf16: trainer.precision=bf16-mixed became 16-mixed" in caplog.text
    )
    cfg = train_cfg(tmp_path, f"trainer={trainer}")
    assert check_devices(cfg, Machine(**A100)).trainer.precision == "bf16-mixed"


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about_not_refused(tmp_path, caplog):
    cfg = train_cfg(tmp_path, "trainer.precision=bf16-mixed")
    with caplog.at_level(logging.WARNING, logger="segkit.config.devices"):
        check_devices(cfg, Machine(**dict(CPU, cpu_bf16=False)))
    assert cfg.trainer.precision == "bf16-mixed"
    assert "without bf16 instructions" in caplog.text and "Fix: trainer.precision=32-true" in caplog.text
    caplog.clear()
    check_devices(train_cfg(tmp_path, "trainer.precision=bf16-mixed"), Machine(**CPU))
    assert caplog.text == ""


def test_what_runs_here_passes_unchanged(tmp_path):
    for overrides in (
        [],
        ["trainer=cpu"],
        ["trainer.precision=bf16-mixed"],
        ["trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=false"],
    ):
        cfg = train_cfg(tmp_path, *overrides)
        before = dict(cfg.trainer)
        check_devices(cfg, Machine(**CPU))
        assert dict(cfg.trainer) == before, overrides


# ----------------------------------------------------------------------------------------- the entry scripts


def test_train_fails_before_anything_is_written(tmp_path):
    """The train task checks devices right after the config values (tasks/train.py), before W&B, data or model."""
    from segkit.tasks.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = compose_config("train", ["trainer=gpu", "logger=wandb"], tmp_path / "run")
    with pytest.raises(DeviceError, match="trainer.accelerator=cpu"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "script,args",
    [
        ("evaluate.py", ["ckpt_path=missing.ckpt", "trainer=gpu"]),
        ("predict.py", ["ckpt_path=missing.ckpt", "input=missing", "trainer=gpu"]),
    ],
)
def test_evaluate_and_predict_check_devices_before_reading_anything(tmp_path, script, args):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_entry(str(ROOT / script), *args, cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        "trainer.accelerator=gpu (what trainer=gpu and trainer=ddp set) but this machine has no CUDA GPU" in proc.stderr
    ), proc.stderr[-3000:]
    assert "missing" not in proc.stderr.split("Device setting error")[-1]  # not the checkpoint nor the input


# ---------------------------------------------------------------------------------------- data.num_workers=auto


def test_auto_workers_follow_the_cpus_per_process(monkeypatch):
    machine = Machine(**dict(A100, cpus=16, cuda_devices=4))
    assert auto_num_workers(machine, processes=1, gpu=True) == 8  # 16 CPUs for one process: at most 8
    assert auto_num_workers(machine, processes=4, gpu=True) == 4  # every GPU (4 processes) shares 16 CPUs
    assert auto_num_workers(machine, processes=2, gpu=True) == 8 and default_pin_memory(gpu=True)
    assert auto_num_workers(machine) == 8  # no run said: one process, on the GPU the machine has
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun's own count wins
    assert auto_num_workers(machine, processes=2, gpu=True) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert auto_num_workers(machine, processes=1, gpu=False) == 2 and not default_pin_memory(gpu=False)  # a CPU run
    assert auto_num_workers(Machine(**dict(CPU, cpus=2)), processes=2, gpu=False) == 0  # one CPU a process: none


def test_num_workers_auto_is_accepted_kept_and_resolved_by_the_datamodule(tmp_path):
    assert compose_config("train", ["data=folder"], tmp_path).data.num_workers == "auto"  # datasets on disk
    cfg = train_cfg(tmp_path, *TINY_DATA, "data.num_workers=auto")
    assert cfg.data.num_workers == "auto"  # kept: a checkpoint's data config follows the machine that loads it
    datamodule = instantiate(cfg.data)
    assert datamodule.num_workers == auto_num_workers() and isinstance(datamodule.num_workers, int)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert loader.num_workers == datamodule.num_workers
    assert loader.persistent_workers == (loader.num_workers > 0) and loader.pin_memory == torch.cuda.is_available()
    with pytest.raises(ConfigError, match=r"data.num_workers='many' \(a string\) is not a whole number. Allowed: auto"):
        validate(compose_config("train", ["data.num_workers=many"], tmp_path), "train")


@pytest.mark.parametrize("accelerator,devices", [("gpu", 1), ("cpu", 2)])
def test_the_datamodule_loads_for_the_processes_and_device_of_its_trainer(tmp_path, accelerator, devices):
    """What the datamodule gives the Trainer it is attached to, e.g. one on a GPU (here pretended: nothing is
    iterated) or a CPU rehearsal of DDP with 2 processes: the CPUs split between the Trainer's processes, pinned
    memory exactly when they train on CUDA. Told by Lightning's own Trainer, which check_devices checked."""
    from types import SimpleNamespace

    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    datamodule = instantiate(train_cfg(tmp_path, *TINY_DATA, "data.num_workers=auto").data)
    gpu = accelerator == "gpu"
    kind = CUDAAccelerator() if gpu else CPUAccelerator()
    datamodule.trainer = SimpleNamespace(num_devices=devices, accelerator=kind)
    datamodule.setup("fit")
    assert datamodule.num_workers == auto_num_workers(processes=devices, gpu=gpu)
    cpus = Machine().cpus
    assert datamodule.num_workers == (min(8 if gpu else 2, cpus // devices) if cpus // devices >= 2 else 0)
    loader = datamodule.train_dataloader()
    assert loader.pin_memory == gpu and loader.persistent_workers == (loader.num_workers > 0)


def test_lightning_copies_batches_to_a_gpu_without_blocking():
    """Lightning's batch_to_device (the module does not override it) asks for non_blocking copies to CUDA, which
    overlap with computation when the batch is in pinned memory."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    calls = []

    class Spy(torch.Tensor):
        def to(self, *args, **kwargs):
            calls.append(kwargs)
            return self

    move_data_to_device({"image": torch.zeros(2).as_subclass(Spy), "name": ["a"]}, torch.device("cuda", 0))
    assert calls == [{"non_blocking": True}]
