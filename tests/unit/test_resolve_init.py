"""``--init RUN_DIR`` scores the model ``raymeta train`` says to use: ``best/`` when the run has
one, else ``final/``, and says which in one line; a directory given as the model itself is taken as
it is. An ``--init`` that names nothing (``runs/typo``; a hub name that neither the Hugging Face
cache holds nor the hub can give) is one line at once, not the hub client's minute of retries."""

from __future__ import annotations

import logging
import time

import pytest
from huggingface_hub import constants

from raymeta.core.model import OFFLINE_MINILM
from raymeta.errors import ModelError
from raymeta.eval import inits
from raymeta.eval.evaluate import resolve_init


def _model(d):
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return d


def test_a_run_with_best_is_scored_at_best_and_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    _model(run / "final")
    best = _model(run / "best")
    with caplog.at_level(logging.INFO, logger="raymeta"):
        assert resolve_init(str(run)) == str(best.absolute())
    lines = [r.getMessage() for r in caplog.records if r.name == "raymeta.evaluate"]
    assert lines == [f"--init {run}: scoring {best} (best/: the step meta-validation chose)"]


def test_a_run_without_best_is_scored_at_final(tmp_path, caplog):
    final = _model(tmp_path / "run" / "final")
    with caplog.at_level(logging.INFO, logger="raymeta"):
        assert resolve_init(str(tmp_path / "run")) == str(final.absolute())
    assert [r.getMessage()
            for r in caplog.records] == [f"--init {tmp_path / 'run'}: scoring {final} (final/: the "
                                         "last step)"]


def test_final_given_as_such_is_taken(tmp_path, caplog):
    _model(tmp_path / "run" / "best")
    final = _model(tmp_path / "run" / "final")
    with caplog.at_level(logging.INFO, logger="raymeta"):
        assert resolve_init(str(final)) == str(final.absolute())
    assert not caplog.records  # nothing to say: the directory given is the model


def test_a_relative_run_directory_comes_back_absolute(tmp_path, monkeypatch):
    """The Ray tasks that load it run elsewhere: a relative path would name another directory
    there."""
    final = _model(tmp_path / "run" / "final")
    monkeypatch.chdir(tmp_path)
    assert resolve_init("run") == str(final)


# An --init that names nothing: one line at once, never the hub client's minute of retries
# (raymeta/eval/inits.py).


def _one_line_error(init: str) -> str:
    with pytest.raises(ModelError) as e:
        resolve_init(init)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_path_under_a_folder_that_exists_is_no_such_directory(tmp_path, monkeypatch):
    _model(tmp_path / "runs" / "my_run" / "final")
    (tmp_path / "runs" / "starter").mkdir()
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert (_one_line_error("runs/typo")
            == "--init runs/typo: no such directory (runs/ holds: my_run/, starter/)")
    # the closest names first; deeper down, the first folder missing on the way
    assert _one_line_error("runs/my_rn").endswith("(runs/ holds: my_run/, and 1 more)")
    assert _one_line_error("runs/my_run/bset").endswith("(runs/my_run/ holds: final/)")
    assert _one_line_error("runs/nope/final").endswith("(runs/ has no nope/; it holds: my_run/, "
                                                       "starter/)")
    assert _one_line_error("./nope") == "--init ./nope: no such directory (./ holds: runs/)"
    assert _one_line_error(str(tmp_path / "gone")).startswith(f"--init {tmp_path}/gone: no such "
                                                              f"directory ({tmp_path}/ holds")
    assert _one_line_error("a/b/c") == ("--init a/b/c: no such directory (nor a Hugging Face hub "
                                        "name)")
    assert time.monotonic() - started < 5


def test_a_hub_name_outside_the_cache_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(inits, "_hub_reachable", lambda: pytest.fail("no hub check offline"))
    assert _one_line_error("bert-base-uncasedx") == (
        "--init bert-base-uncasedx: no such directory (nor a model in the Hugging Face cache, and "
        "HF_HUB_OFFLINE is set)")


def test_a_name_the_hub_cache_holds_is_taken_offline(tmp_path, monkeypatch):
    """``runs/typo`` too, though ``runs/`` exists here: the cache knows it as a model."""
    hub = tmp_path / "hub"
    for name in ("bert-base-uncased", "runs/typo"):
        repo = hub / f"models--{name.replace('/', '--')}"
        _model(repo / "snapshots" / "abc123")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_init("bert-base-uncased") == "bert-base-uncased"
    assert resolve_init("runs/typo") == "runs/typo"


def test_online_a_hub_name_goes_to_the_hub_and_an_unreachable_hub_is_one_line(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(inits, "_hub_reachable", lambda: True)
    assert resolve_init("bert-base-uncased") == "bert-base-uncased"  # downloaded where loaded
    assert resolve_init("org/model") == "org/model"
    monkeypatch.setattr(inits, "_hub_reachable", lambda: False)
    assert _one_line_error("bert-base-uncased") == (
        f"--init bert-base-uncased: no such directory (nor a model in the Hugging Face cache, and "
        f"{constants.ENDPOINT} cannot be reached; HF_HUB_OFFLINE=1 skips the hub)")


def test_the_offline_alias():
    assert resolve_init(OFFLINE_MINILM) == OFFLINE_MINILM
    assert _one_line_error("offline:bert") == ("--init offline:bert: unknown offline model (the "
                                               f"one shipped: {OFFLINE_MINILM})")


def test_a_file_is_not_a_model_directory(tmp_path):
    (tmp_path / "model.bin").write_text("x")
    assert _one_line_error(str(tmp_path / "model.bin")).endswith("not a model directory (a file)")
