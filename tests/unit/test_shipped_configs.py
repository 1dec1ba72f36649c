"""Every config shipped in raymeta/configs/ (recipes included; the repository's ``configs`` links
there) loads under today's schema, saves and reloads as the same run, and those that choose on
validation tasks keep them disjoint from what they train and test on, so a committed recipe cannot
rot. Nothing here reads data or starts Ray: a config names its tasks' files (``${data_dir}/...``)
without opening them."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymeta.benchmark import run_configs
from raymeta.catalog import CONFIGS_DIR, config_file, config_names
from raymeta.config import load_config, save_config
from raymeta.errors import ConfigError
from raymeta.train.validation_tasks import validation_specs
from raymeta.tune.search import check_tune_config

from ..conftest import REPO

CONFIGS = sorted(CONFIGS_DIR.rglob("*.yaml"))
IDS = [p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS]


def test_the_recipes_are_shipped():
    assert {"recipes/huffpost.yaml", "recipes/huffpost_tune.yaml", "recipes/fewrel.yaml",
            "recipes/fewrel_tune.yaml",
            "recipes/general.yaml", "starter.yaml", "tiny.yaml"} <= set(IDS)


def test_the_repository_configs_link_is_the_package_directory():
    assert (REPO / "configs").resolve() == CONFIGS_DIR.resolve()


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_shipped_config_loads_and_its_choices_stay_off_test_tasks(path: Path, tmp_path):
    cfg = load_config(path)
    if cfg.eval.validation is not None:
        validation_specs(cfg)
        run_configs(cfg, tmp_path)  # every benchmark run (variant x algorithm) checked the same way
    if cfg.tune.validation_tasks:
        check_tune_config(cfg)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_shipped_config_by_name_saves_and_reloads_as_the_same_run(path: Path, tmp_path):
    name = path.relative_to(CONFIGS_DIR).with_suffix("").as_posix()
    cfg = load_config(name)  # by name, as `raymeta train --config starter`
    assert cfg == load_config(path)
    again = load_config(save_config(cfg, tmp_path))
    assert again.model_dump() == cfg.model_dump()


@pytest.mark.parametrize("given", ["starter", "starter.yaml", "configs/starter.yaml",
                                   "recipes/huffpost"])
def test_config_names_resolve_to_the_package(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository: no configs/ link here
    assert config_file(given).resolve().is_relative_to(CONFIGS_DIR.resolve())


def test_a_file_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "starter.yaml").write_text("name: mine\n")
    assert load_config("starter.yaml").name == "mine"
    assert load_config("starter").name == "starter"


@pytest.mark.parametrize("given", ["startr", "recipes/nope.yaml"])
def test_an_unknown_config_name_lists_the_shipped_ones(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(given)
    msg = str(e.value)
    assert "\n" not in msg and f"config file {given}: not found" in msg
    assert all(n in msg for n in config_names()) and "recipes/huffpost" in msg
