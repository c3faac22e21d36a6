"""Optuna searches (conf/hparams_search/): they compose into an Optuna sweeper, and a tiny search runs end to end."""

import csv
import json

import optuna
import pytest
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, LogUniformDistribution

from conftest import CONF, ROOT, TINY_BACKBONE, TINY_DATA, compose_with_hydra, run_entry
from segkit.reports import sweeps

SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def search_space(cfg: DictConfig) -> dict:
    """hydra.sweeper.params parsed exactly as the sweeper parses them: name -> Optuna distribution."""
    distributions, fixed = create_params_from_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    assert not fixed, f"fixed values in a search space: {fixed}"
    return distributions


def test_searches_exist_and_the_default_is_no_search():
    assert "lr_loss" in SEARCHES and len(SEARCHES) >= 2
    cfg = compose_with_hydra()
    assert cfg.hydra.sweeper._target_ != OPTUNA_SWEEPER  # plain `-m` stays a grid sweep


@pytest.mark.parametrize("name", SEARCHES)
def test_search_composes_into_a_seeded_tpe_optuna_sweeper(name):
    cfg = compose_with_hydra(f"hparams_search={name}", "debug=fast")  # debug composes after the search
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == OPTUNA_SWEEPER
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert isinstance(sweeper.sampler.seed, int)
    assert 0 < sweeper.sampler.n_startup_trials < sweeper.n_trials
    assert sweeper.direction == "maximize" and cfg.optimized_metric == "val/mIoU_best"
    assert sweeper.study_name == name and sweeper.storage is None and sweeper.n_jobs == 1
    assert cfg.trainer.max_epochs == 1  # debug=fast still applies on top of the search
    # Every searched key is either a config group with those options or an existing value of the config.
    space = search_space(cfg)
    assert space
    for key, dist in space.items():
        if (CONF / key).is_dir():
            assert isinstance(dist, CategoricalDistribution), key
            assert all((CONF / key / f"{choice}.yaml").is_file() for choice in dist.choices), (key, dist.choices)
        else:
            assert OmegaConf.select(cfg, key) is not None, f"{key} is not in the train config"
    if "optimizer.lr" in space:
        assert space["optimizer.lr"] == LogUniformDistribution(1e-4, 1e-2)
    # Command-line overrides of the search still win.
    cfg = compose_with_hydra(f"hparams_search={name}", "hydra.sweeper.n_trials=2", "experiment=unet_efficientnet_b0")
    assert cfg.hydra.sweeper.n_trials == 2 and cfg.hydra.sweeper._target_ == OPTUNA_SWEEPER


def test_lr_loss_searches_lr_weight_decay_and_loss():
    space = search_space(compose_with_hydra("hparams_search=lr_loss"))
    assert set(space) == {"optimizer.lr", "optimizer.weight_decay", "loss"}
    assert set(space["loss"].choices) == {"ce", "ce_dice"}


def test_tpe_sampler_runs_past_its_random_startup_trials():
    """optuna 2.10 with this numpy: the model-based part of TPE, which a 2-trial sweep never reaches."""
    cfg = compose_with_hydra("hparams_search=lr_loss", "hydra.sweeper.sampler.n_startup_trials=3")
    space = search_space(cfg)
    study = optuna.create_study(sampler=instantiate(cfg.hydra.sweeper.sampler), direction="maximize")
    for _ in range(8):
        trial = study.ask()
        for key, dist in space.items():
            trial._suggest(key, dist)
        study.tell(trial, -abs(trial.params["optimizer.lr"] - 3e-3) + (trial.params["loss"] == "ce_dice"))
    assert len(study.trials) == 8 and study.best_value > 0.99  # some ce_dice trial is best


@pytest.mark.slow
def test_a_two_trial_optuna_search_runs_and_records_its_best(tmp_path):
    proc = run_entry(
        str(ROOT / "train.py"),
        "-m",
        "hparams_search=lr_loss",
        "hydra.sweeper.n_trials=2",
        "debug=fast",
        "logger=csv",
        *TINY_DATA,
        TINY_BACKBONE,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1"]

    # What the seeded sampler proposes is what the jobs ran with, and it lies in the declared ranges.
    cfg = compose_with_hydra("hparams_search=lr_loss")
    space = search_space(cfg)
    study = optuna.create_study(sampler=instantiate(cfg.hydra.sweeper.sampler), direction="maximize")
    values, sampled = [], []
    for job in jobs:
        expected = study.ask()
        for key, dist in space.items():
            expected._suggest(key, dist)
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        job_cfg = OmegaConf.load(job / "config.yaml")
        params = {}
        for key, dist in space.items():
            value = overrides[key] if isinstance(dist, CategoricalDistribution) else float(overrides[key])
            assert dist._contains(dist.to_internal_repr(value)), f"job {job.name}: {key}={value} outside {dist}"
            if key == "loss":  # a group choice: the job's loss is that option's
                assert job_cfg.loss._target_ == OmegaConf.load(CONF / "loss" / f"{value}.yaml")._target_
            else:
                assert OmegaConf.select(job_cfg, key) == pytest.approx(value)
            params[key] = value
        assert params == pytest.approx(expected.params), f"job {job.name} did not run the seeded trial"
        sampled.append(params)
        values.append(json.loads((job / "metrics.json").read_text())["metrics"]["val/mIoU_best"])
    assert sampled[0]["optimizer.lr"] != sampled[1]["optimizer.lr"]

    # train.py's return value reached Optuna: its best is the best job's val/mIoU_best, with that job's params.
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))
    assert results["name"] == "optuna"
    assert results["best_value"] == pytest.approx(max(values))
    best_job = values.index(max(values))  # Optuna keeps the first of equal values
    assert results["best_params"] == pytest.approx(sampled[best_job])

    # The sweep summary (`summarize_sweep.py <dir>`, here its library function) reads an Optuna sweep directory too.
    sweeps.summarize(sweep_dir, "val/mIoU_best", ["val/mIoU"])
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["job"]) for r in rows) == [0, 1] and all(r["status"] == "done" for r in rows)
    assert {"optimizer.lr", "optimizer.weight_decay"} <= set(rows[0])
    summary = (sweep_dir / "summary.md").read_text()
    assert f"Optuna best value: {results['best_value']:.4f}" in summary and (sweep_dir / "summary.png").is_file()
