"""The typed config: layers, overrides, one-line errors naming the key, saved resolved copy."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.config import (
    ExperimentConfig,
    is_secret_key,
    load_config,
    parse_overrides,
    redact,
    save_config,
)
from raymeta.errors import ConfigError

TASK = {"name": "t1", "type": "sequence_classification",
        "source": {"kind": "files", "format": "csv", "files": {"train": "x.csv"}}}


def write(tmp_path, data) -> str:
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(p)


def test_layers_defaults_yaml_overrides(tmp_path):
    path = write(tmp_path, {"seed": 3, "meta": {"steps": 7}, "tasks": [TASK]})
    cfg = load_config(path, ["meta.steps=9", "tasks.t1.weight=2.5", "optim.lr=1e-4"])
    assert cfg.seed == 3  # from YAML
    assert cfg.meta.steps == 9  # override wins over YAML
    assert cfg.tasks[0].weight == 2.5  # addressed by task name
    assert cfg.optim.lr == 1e-4
    assert cfg.meta.inner_steps == ExperimentConfig().meta.inner_steps  # default


def test_ready_made_task_by_use_with_overrides():
    cfg = load_config(data={"tasks": [{"use": "bbc_news", "weight": 3}, "trec"]})
    assert [t.name for t in cfg.tasks] == ["bbc_news", "trec"]
    assert cfg.tasks[0].weight == 3 and cfg.tasks[0].source.kind == "builtin"


def test_a_folder_of_task_files_is_one_task_each_in_file_order(tmp_path):
    """``tasks: [DIR]`` or ``{use: DIR, ...}``: every task YAML in the folder, sorted by file name,
    each with the entry's overrides and its own relative paths; the saved config reloads as the
    same run."""
    folder = tmp_path / "many"
    folder.mkdir()
    for name in ("b_task", "a_task", "c_task"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(dict(
            TASK, name=name, source={**TASK["source"], "files": {"train": f"{name}.csv"}})))
    (folder / "notes.txt").write_text("not a task")
    cfg = load_config(write(tmp_path, {"tasks": ["bbc_news", {"use": "many", "weight": 0.5}]}))
    assert [t.name for t in cfg.tasks] == ["bbc_news", "a_task", "b_task", "c_task"]
    assert [t.weight for t in cfg.tasks] == [1.0, 0.5, 0.5, 0.5]
    assert cfg.tasks[1].source.base_dir == str(folder.resolve())  # a_task.csv beside its YAML
    same = load_config(data={"tasks": [{"use": "bbc_news"}, str(folder)]})
    assert [t.name for t in same.tasks] == [t.name for t in cfg.tasks]
    assert load_config(save_config(cfg, tmp_path / "saved")) == cfg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^config key 'tasks': folder .*empty holds no task "
                       r"YAML \(\*.yaml, \*.yml\)$"):
        load_config(write(tmp_path, {"tasks": ["empty"]}))


@pytest.mark.parametrize(
    "data, overrides, expect",
    [
        ({"modle": {}}, [], "config key 'modle': unknown key"),
        ({}, ["meta.inner_stepz=1"], "config key 'meta.inner_stepz': unknown key"),
        ({}, ["meta.steps=abc"], "config key 'meta.steps'"),
        ({}, ["meta.inner_steps=-1"],
         "config key 'meta.inner_steps': Input should be greater than or equal to 0"),
        ({}, ["meta.algorithm=magic"], "config key 'meta.algorithm'"),
        ({"tasks": [dict(TASK, type="summarization")]}, [], "config key 'tasks.t1.type'"),
        ({"tasks": [dict(TASK, weight=-1)]}, [], "config key 'tasks.t1.weight'"),
        ({"tasks": [dict(TASK, weight=float("nan"))]}, [], "config key 'tasks.t1.weight'"),
        ({"tasks": [TASK, TASK]}, [], "task name 't1' appears twice"),
        ({"tasks": [{"use": "no_such_task"}]}, [], "task 'no_such_task': not a ready-made task"),
        ({}, ["novalue"], "override 'novalue': expected key=value"),
    ],
)
def test_bad_config_one_line_error(tmp_path, data, overrides, expect):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, data), overrides)
    msg = str(e.value)
    assert expect in msg
    assert "\n" not in msg


def test_yaml_that_does_not_parse(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.yaml: line \d+, column \d+: YAML does not parse"):
        load_config(write(tmp_path, "seed: 1\nmeta: [unclosed\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_config_round_trip_and_redaction(tmp_path):
    cfg = load_config(data={"tasks": [TASK], "model": {"from_config": {
        "model_type": "bert", "hf_token": "hf_" + "a" * 30}}})
    path = save_config(cfg, tmp_path / "run")
    text = path.read_text()
    assert "hf_aaaa" not in text and "***" in text
    again = ExperimentConfig.model_validate(yaml.safe_load(text))
    assert again.tasks[0].name == "t1" and again.meta == cfg.meta


def test_redact_values_and_keys():
    assert redact({"api_key": "x", "note": "token hf_" + "b" * 25, "n": 1}) == {"api_key": "***",
                                                                                "note": "token ***",
                                                                                "n": 1}


@pytest.mark.parametrize("key", ["token", "hf_token", "HF_TOKEN", "use_auth_token", "accessToken",
                                 "api_key", "apiKey",
                                 "password", "client_secret", "secret_access_key",
                                 "aws_secret_access_key", "auth",
                                 "credentials", "private_key"])
def test_secret_names_are_redacted(key):
    assert is_secret_key(key)
    assert redact({"read_options": {key: "s3cr3t-value"}}) == {"read_options": {key: "***"}}


@pytest.mark.parametrize("key", ["tokenizer", "max_tokens", "num_tokens", "pad_token_id",
                                 "token_count", "author",
                                 "key", "secretary", "name_or_path"])
def test_settings_that_only_contain_a_secret_word_are_kept(key):
    assert not is_secret_key(key)
    assert redact({key: "kept"}) == {key: "kept"}


def test_saved_config_with_a_tokenizer_and_a_token_reloads_as_its_run(tmp_path):
    """model.tokenizer is a setting (kept); a hub token in read_options is a secret (gone from the
    file)."""
    token = "hf_" + "Z9" * 15
    task = dict(TASK, source=dict(TASK["source"], read_options={"token": token}))
    cfg = load_config(data={"tasks": [task], "model": {"tokenizer": "bert-base-uncased"}})
    text = save_config(cfg, tmp_path / "run").read_text()
    assert token not in text
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again.model.tokenizer == "bert-base-uncased"
    assert again.tasks[0].source.read_options == {"token": "***"}
    assert again.model_dump(exclude={"tasks"}) == cfg.model_dump(exclude={"tasks"})


@settings(max_examples=60, deadline=None)
@given(steps=st.integers(min_value=1, max_value=10**6), lr=st.floats(min_value=1e-8, max_value=1.0),
       k=st.integers(min_value=1, max_value=64))
def test_overrides_round_trip(steps, lr, k):
    cfg = load_config(overrides=[f"meta.steps={steps}", f"optim.lr={lr!r}",
                                 f"meta.episode.shots={k}"])
    assert cfg.meta.steps == steps and math.isclose(cfg.optim.lr,
                                                    lr) and cfg.meta.episode.shots == k


@settings(max_examples=80, deadline=None)
@given(key=st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True),
       value=st.text(max_size=12))
def test_any_override_is_accepted_or_a_config_error(key, value):
    """Fuzz: whatever the user types, the loader answers a config or a one-line ConfigError."""
    try:
        load_config(overrides=[f"{key}={value}"])
    except ConfigError as e:
        assert "\n" not in str(e)


def test_parse_overrides_types():
    assert parse_overrides(["a=1", "b=1.5", "c=[4, 8]", "d=text", "e=true"]) == [
        ("a", 1), ("b", 1.5), ("c", [4, 8]), ("d", "text"), ("e", True)
    ]
