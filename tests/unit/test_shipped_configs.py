"""Every config shipped in configs/ (recipes included) loads under today's schema, and those that choose on
validation tasks keep them disjoint from what they train and test on, so a committed recipe cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymeta.benchmark import run_configs
from raymeta.config import load_config
from raymeta.train.validation import validation_specs
from raymeta.tune.search import _validate as validate_tune

from ..conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_the_recipes_are_shipped():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {"recipes/huffpost.yaml", "recipes/huffpost_tune.yaml", "recipes/fewrel.yaml", "recipes/fewrel_tune.yaml",
            "recipes/general.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(REPO / "configs").as_posix() for p in CONFIGS])
def test_shipped_config_loads_and_its_choices_stay_off_test_tasks(path: Path, tmp_path):
    cfg = load_config(path)
    if cfg.eval.validation is not None:
        validation_specs(cfg)
        run_configs(cfg, tmp_path)  # every benchmark run (variant x algorithm) checked the same way
    if cfg.tune.validation_tasks:
        validate_tune(cfg)
