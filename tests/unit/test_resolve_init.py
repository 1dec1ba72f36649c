"""``--init RUN_DIR`` scores the model ``raymeta train`` says to use: ``best/`` when the run has
one, else ``final/``, and says which in one line; a directory given as the model itself is taken as
it is."""

from __future__ import annotations

import logging

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
