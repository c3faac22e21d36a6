"""A checkpoint is the model (issue 16): trained from a local weights file or with `backbone.pretrained=true`, it
evaluates, predicts and exports with the file gone and no way to download, and timm is never asked for
pretrained weights."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import lightning as L
import numpy as np
import pytest
import timm
import torch
from hydra.utils import instantiate

from conftest import compose_config, tiny_train_config
from helpers.fake_data import save
from segkit.models.backbone import PretrainedWeightsUnavailable
from segkit.tasks.evaluate import evaluate
from segkit.tasks.export import export
from segkit.tasks.predict import predict
from segkit.training.module import SegmentationModule, build_module, load_module

CONV1 = "net.backbone.encoder.conv1.weight"


pytestmark = pytest.mark.slow  # every test reads a checkpoint of a short training


@pytest.fixture(scope="module")
def from_weights_file(tmp_path_factory) -> dict:
    """A checkpoint Lightning wrote after one step of a model started from `backbone.weights=<file>`; the file
    is deleted afterwards."""
    root = tmp_path_factory.mktemp("portable")
    weights = root / "resnet18-imagenet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    cfg = tiny_train_config(root / "run", f"backbone.weights={weights}")
    module = build_module(cfg)
    from_file = torch.load(weights, weights_only=True)["conv1.weight"]
    assert torch.equal(module.state_dict()[CONV1], from_file)  # the file was used
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    weights.unlink()
    trained = module.state_dict()[CONV1].clone()
    assert not torch.equal(trained, from_file)
    return {"root": root, "ckpt": ckpt, "weights": weights, "trained_conv1": trained}


@pytest.fixture
def timm_calls(monkeypatch) -> list[dict]:
    """Every timm.create_model call's `pretrained` and keyword arguments."""
    calls: list[dict] = []
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append({"name": name, "pretrained": pretrained, **kwargs})
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    return calls


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and an empty Hugging Face / torch hub cache."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("TORCH_HOME", str(empty))
    # huggingface_hub reads these at import; timm asks it at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty / "hub"))


def never_pretrained(calls: list[dict]) -> None:
    assert calls, "the network was not rebuilt through timm"
    for call in calls:
        assert call["pretrained"] is False, call
        assert "file" not in (call.get("pretrained_cfg_overlay") or {}) and "checkpoint_path" not in call, call


def write_images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, size in (("a", (40, 56)), ("b", (37, 45))):
        save(folder / f"{name}.png", (rng.random((*size, 3)) * 255).astype(np.uint8))
    return folder


def evaluate_and_predict(ckpt: Path, tmp_path: Path) -> None:
    """evaluate.py on the checkpoint's own data, then predict.py into tmp_path/out."""
    metrics = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "trainer.accelerator=cpu"], tmp_path / "e"))
    assert 0 <= metrics["val/mIoU"] <= 1
    images = write_images(tmp_path / "in")
    overrides = [f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'out'}", "num_workers=0"]
    predict(compose_config("predict", [*overrides, "trainer.accelerator=cpu"], tmp_path / "p"))


def test_a_checkpoint_from_a_weights_file_loads_without_the_file(from_weights_file, timm_calls, offline):
    assert not from_weights_file["weights"].exists()
    module = load_module(from_weights_file["ckpt"])
    assert torch.equal(module.state_dict()[CONV1], from_weights_file["trained_conv1"])
    # The record says how it was trained; the rebuild just did not reach for it.
    assert module.hparams.model["backbone"]["weights"] == str(from_weights_file["weights"])
    assert module.hparams_initial.model["backbone"]["weights"] == str(from_weights_file["weights"])
    never_pretrained(timm_calls)


def test_evaluate_predict_and_export_need_only_the_checkpoint(from_weights_file, timm_calls, offline, tmp_path):
    ckpt = from_weights_file["ckpt"]
    evaluate_and_predict(ckpt, tmp_path)
    assert {p.name for p in (tmp_path / "out" / "masks").glob("*.png")} == {"a.png", "b.png"}

    summary = export(
        compose_config(
            "export", [f"ckpt_path={ckpt}", f"output={tmp_path / 'export'}", "formats=[onnx]"], tmp_path / "x"
        )
    )
    assert summary["exports"]["onnx"]["max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "export" / "export.json").read_text())["exports"]["onnx"]
    never_pretrained(timm_calls)


def test_a_pretrained_checkpoint_evaluates_and_predicts_offline(from_weights_file, timm_calls, offline, tmp_path):
    checkpoint = torch.load(from_weights_file["ckpt"], weights_only=True)
    backbone = checkpoint["hyper_parameters"]["model"]["backbone"]
    backbone.update(pretrained=True, weights=None, checkpoint_path=str(tmp_path / "gone.pth"))
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save(checkpoint, ckpt)

    # The control: built from its stored config as it stands, the network would fetch weights.
    with pytest.raises(PretrainedWeightsUnavailable, match="could not be loaded"):  # Hydra's wrapping taken off
        SegmentationModule(**checkpoint["hyper_parameters"])
    assert timm_calls and timm_calls[-1]["pretrained"] is True
    timm_calls.clear()

    evaluate_and_predict(ckpt, tmp_path)
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2
    never_pretrained(timm_calls)
    assert load_module(ckpt).hparams.model["backbone"]["pretrained"] is True
