"""What a command says when it refuses to run (an untrusted checkpoint, a config or data mistake, a device setting,
a resume with nothing to resume): the message and its fix, without a traceback in front that reads like a crash, and
exit status 1; `HYDRA_FULL_ERROR=1` still shows the traceback. Each entry script, in this process (run_entry)."""

import ast

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import ROOT, run_entry
from helpers.fake_data import save
from segkit.errors import Refusal, refusals_as_messages

UNTRUSTED = "Refusing"


@pytest.fixture(scope="module")
def untrusted_checkpoint(tmp_path_factory):
    """A checkpoint whose model config names a callable outside the allow-list (os.system)."""
    path = tmp_path_factory.mktemp("crafted") / "crafted.ckpt"
    model = {"_target_": "os.system", "_args_": ["echo pwned"]}
    hparams = {"model": model, "loss": {}, "optimizer": {}, "data": {}}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "epoch": 0, "global_step": 1}, path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return save(tmp_path_factory.mktemp("in") / "a.png", np.zeros((40, 56, 3), dtype=np.uint8))


def refused(script: str, *args: str, cwd, expected: str) -> str:
    """Runs `script` as a user's shell would (no HYDRA_FULL_ERROR): exit status 1 and `expected` said, with no
    traceback or Hydra's hint before it. Then with HYDRA_FULL_ERROR=1: the traceback. Returns what it said."""
    proc = run_entry(str(ROOT / script), *args, cwd=cwd, full_error=False)
    said = proc.stderr + proc.stdout
    assert proc.returncode == 1, said[-3000:]
    assert expected in proc.stderr and "Fix" in proc.stderr, said[-3000:]
    assert "Traceback" not in said and "HYDRA_FULL_ERROR" not in said, said[-3000:]
    full = run_entry(str(ROOT / script), *args, cwd=cwd, full_error=True)
    assert full.returncode == 1 and "Traceback" in full.stderr and expected in full.stderr, full.stderr[-3000:]
    return proc.stderr


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py", "export.py"])
def test_an_untrusted_checkpoint_is_refused_in_one_message(script, untrusted_checkpoint, image, tmp_path):
    args = [f"ckpt_path={untrusted_checkpoint}"]
    if script == "predict.py":
        args += [f"input={image}", f"output={tmp_path / 'masks'}"]
    said = refused(script, *args, cwd=tmp_path, expected=UNTRUSTED)
    assert "os.system" in said and str(untrusted_checkpoint) in said


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("train.py", ["data.batch_size=0"], "data.batch_size=0 is out of range"),  # a config value
        (
            "train.py",
            ["ckpt_path=last"],
            "ckpt_path=last: there is no run under",
        ),  # a resume, refused by Hydra's resolver
        ("evaluate.py", ["ckpt_path=gone.ckpt"], 'gone.ckpt" does not exist'),  # a checkpoint file
        ("predict.py", ["ckpt_path=x", "input=x", "output=x", "trainer.precision=16-mixed"], "16-mixed"),  # device
        ("export.py", ["ckpt_path=x", "formats=[tflite]"], "tflite is no export format"),  # a config value
        ("check_data.py", ["data=folder", "data.root=nothing", "data.num_workers=-2"], "data.num_workers=-2"),
        ("browse_data.py", ["data=folder", "data.root=nothing"], "data.root=nothing is not a folder"),  # data
    ],
    ids=["train-config", "train-resume", "evaluate-file", "predict-device", "export-config", "check_data", "browse"],
)
def test_a_refusal_says_its_message_and_fix_without_a_traceback(script, args, expected, tmp_path):
    refused(script, *args, cwd=tmp_path, expected=expected)


def test_only_refusals_lose_their_traceback(monkeypatch):
    """A bug is not a refusal: it keeps its traceback."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @refusals_as_messages
    def command(error: Exception) -> None:
        raise error

    with pytest.raises(SystemExit, match="^data.root=x is not a folder. Fix: ...$"):
        command(Refusal("data.root=x is not a folder. Fix: ..."))
    with pytest.raises(ZeroDivisionError):
        command(ZeroDivisionError("a bug"))
    # A class a config names refusing its arguments, wrapped by Hydra's instantiate: the refusal's message alone.
    for cause in (Refusal("logger=mlflow needs mlflow. Fix: ..."), ValueError("a bug")):
        try:
            instantiate({"_target_": "builtins.divmod", "_args_": [1, 0]})  # a real InstantiationException
        except InstantiationException as wrapped:
            wrapped.__cause__ = cause
            error = wrapped
        if isinstance(cause, Refusal):
            with pytest.raises(SystemExit, match="^logger=mlflow needs mlflow. Fix: ...$"):
                command(error)
        else:
            with pytest.raises(InstantiationException):
                command(error)


@pytest.mark.parametrize(
    "script", ["train.py", "evaluate.py", "predict.py", "export.py", "check_data.py", "browse_data.py", "bench.py"]
)
def test_every_command_says_refusals_as_messages(script):
    """Each command's main function is wrapped, under Hydra's decorator (above it, Hydra would print a traceback
    first)."""
    main = next(n for n in ast.parse((ROOT / script).read_text()).body if getattr(n, "name", "") == "main")
    assert [ast.unparse(d).split("(")[0] for d in main.decorator_list] == ["hydra.main", "refusals_as_messages"]
