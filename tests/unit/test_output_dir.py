"""``raymeta train`` into an output_dir that already holds a run: refused unless ``--resume``
continues it or ``--overwrite`` starts it over (Hugging Face's ``overwrite_output_dir``); nothing of
the user's own is removed."""

from __future__ import annotations

import pytest

from raymeta.errors import RaymetaError
from raymeta.train.trainer import RUN_OUTPUTS, prepare_output_dir


def _a_run(out):
    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "notes.txt").write_text("mine")  # not a run output


def test_a_new_or_empty_directory_is_fine(tmp_path):
    prepare_output_dir(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    prepare_output_dir(tmp_path / "empty", resume=False, overwrite=False)


def test_a_directory_holding_a_run_is_refused_and_left_as_it_is(tmp_path):
    _a_run(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RaymetaError) as err:
        prepare_output_dir(tmp_path, resume=False, overwrite=False)
    assert str(err.value) == (f"output_dir {tmp_path} already holds a run (config.yaml, "
                              "metrics.jsonl, tensorboard, "
                              "checkpoints): add --resume to continue it, or --overwrite to start "
                              "it over")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_resume_keeps_the_run(tmp_path):
    _a_run(tmp_path)
    prepare_output_dir(tmp_path, resume=True, overwrite=False)
    assert ((tmp_path / "checkpoints" / "step-00000002").is_dir()
            and (tmp_path / "metrics.jsonl").is_file())


def test_overwrite_removes_the_runs_outputs_only(tmp_path, caplog):
    _a_run(tmp_path)
    prepare_output_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not any((tmp_path / name).exists() for name in RUN_OUTPUTS)
    assert ("removed the previous run's config.yaml, metrics.jsonl, tensorboard, checkpoints"
            in caplog.text)


def test_resume_and_overwrite_together_is_one_line(tmp_path):
    with pytest.raises(RaymetaError, match="give one of them"):
        prepare_output_dir(tmp_path, resume=True, overwrite=True)


def test_dry_run_refuses_the_same_and_removes_nothing(tmp_path):
    """``raymeta train --dry-run``: what train would refuse, refused; what it would remove, kept."""
    _a_run(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(RaymetaError, match="already holds a run"):
        prepare_output_dir(tmp_path, resume=False, overwrite=False, dry_run=True)
    with pytest.raises(RaymetaError, match="give one of them"):
        prepare_output_dir(tmp_path, resume=True, overwrite=True, dry_run=True)
    prepare_output_dir(tmp_path, resume=False, overwrite=True, dry_run=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
