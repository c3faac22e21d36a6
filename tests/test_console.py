"""What a run says, as a user sees it with the output redirected (a log file, a cluster job): one line per epoch
in the console and in train.log, each Lightning line once, none of the known noise, and at the end where
everything went and what to run next."""

import re

import pytest

from conftest import ROOT, TINY_DATA, run_script

NOISE = (
    "Tip:",  # Lightning's advertising
    "anonymous setting has no effect",  # W&B, about a setting Lightning always passes
    "`resume` will be ignored",  # W&B offline, likewise
    "LeafSpec",  # Lightning calling a torch API torch deprecates
    "does not have many workers",  # Lightning's advice on a worker count the config chose
)


@pytest.mark.slow
def test_a_redirected_default_run_tells_its_story_once(tmp_path):
    proc = run_script(str(ROOT / "train.py"), *TINY_DATA, "trainer.max_epochs=2", "test=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()

    for text in (console, log):
        epochs = re.findall(
            r"epoch (\d)/2  train loss [\d.]+  val loss [\d.]+  val mIoU [\d.]+  best [\d.]+  \d+ s", text
        )
        assert epochs == ["1", "2"], text[-3000:]
    assert re.search(r"epoch 1/2 .* ETA ", console)  # the time left, after the first epoch
    assert console.count("GPU available:") == 1 and console.count("Seed set to") == 1  # not once per handler
    assert [noise for noise in NOISE if noise in console] == []
    closing = console[console.index("Run directory:") :]
    assert f"Run directory:   {run}" in closing and "Best checkpoint: " in closing
    assert "Dashboard:       make dashboard" in closing and "W&B (offline):   wandb sync " in closing
