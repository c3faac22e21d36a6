"""Every public class and function that a config or a user calls says what its arguments mean and shows a short
example, in the style of segmentation_models_pytorch's `Unet`; and every example in segkit runs (doctest)."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import segkit
from segkit.callbacks import DashboardSummaries, PeriodicCheckpoint, PredictionSamples, TimeBudget
from segkit.data import FileDataModule, FolderDataModule, ListFileDataModule, SegDataModule, SyntheticDataModule
from segkit.data.sampling import ClassBalancedSampler, repeat_factors
from segkit.data.transforms import CatMaxRatioCrop
from segkit.models import FCN, FPN, Backbone, DeepLabV3Plus, SegFormer, UNet, UPerNet
from segkit.reports.predictions import MaskWriter, PredictionTable
from segkit.runs.checkpoint_io import AtomicCheckpointIO
from segkit.runs.loggers import CSVLogger, WandbLogger
from segkit.training.freezing import BackboneFreezing
from segkit.training.inference import Inference, build_inference
from segkit.training.losses import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    OhemCrossEntropyLoss,
    TverskyLoss,
    WeightedSum,
)
from segkit.training.module import SegmentationModule, build_module, load_module
from segkit.training.schedules import cosine, poly

PUBLIC = [
    *(UNet, FCN, UPerNet, SegFormer, DeepLabV3Plus, FPN, Backbone),
    *(CrossEntropyLoss, DiceLoss, FocalLoss, WeightedSum, poly, cosine),
    *(LovaszLoss, TverskyLoss, OhemCrossEntropyLoss),
    *(SegDataModule, FileDataModule, FolderDataModule, ListFileDataModule, SyntheticDataModule, CatMaxRatioCrop),
    *(ClassBalancedSampler, repeat_factors),
    *(PredictionSamples, DashboardSummaries, TimeBudget, PeriodicCheckpoint, PredictionTable, MaskWriter),
    *(Inference, build_inference, SegmentationModule, build_module, load_module, BackboneFreezing),
    *(CSVLogger, WandbLogger, AtomicCheckpointIO),
]
MODULES = sorted(info.name for info in pkgutil.walk_packages(segkit.__path__, prefix="segkit."))


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__qualname__)
def test_public_api_says_what_its_arguments_mean_with_an_example(obj):
    doc = inspect.getdoc(obj) or ""
    assert "Args:" in doc or "Takes no arguments" in doc, f"{obj.__qualname__}: no Args section"
    assert "Example:" in doc and ">>> " in doc, f"{obj.__qualname__}: no Example"
    if "Args:" in doc and not doc.split("Args:", 1)[1].lstrip().startswith("those of"):
        parameters = [
            name
            for name, p in inspect.signature(obj).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL,)
        ]
        args = doc.split("Args:", 1)[1].split("Example:", 1)[0]
        undocumented = [name for name in parameters if name not in args]
        assert undocumented == [], f"{obj.__qualname__}: Args does not describe {undocumented}"


@pytest.mark.usefixtures("one_thread")  # tiny networks
def test_every_docstring_example_runs():
    failed = {name: doctest.testmod(importlib.import_module(name)).failed for name in MODULES}
    assert {name: count for name, count in failed.items() if count} == {}
