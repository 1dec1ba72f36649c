"""The one line ``raymeta train`` ends with when interrupted (Ctrl-C, SIGTERM): the step, the last
checkpoint and the command that continues the run, or that the run starts over from step 0
(:func:`raymeta.train.interrupted.interrupted_message`; end to end:
tests/integration/test_interrupt.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from raymeta.train.interrupted import interrupted_message
from raymeta.train.outputs import RunOutputs

COMMAND = ["raymeta", "train", "--config", "my exp.yaml", "meta.steps=20"]


def trainer(out: Path, step: int, last_checkpoint: Path | None = None,
            resume: bool = False) -> SimpleNamespace:
    """What the message reads of a MetaTrainer."""
    outputs = RunOutputs(str(out))
    return SimpleNamespace(step=step, outputs=outputs, out=outputs.local,
                           last_checkpoint=last_checkpoint, resume=resume)


def checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    p = out / "checkpoints" / f"step-{step:08d}"
    p.mkdir(parents=True)
    if complete:  # a manifest listing no file: complete
        (p / "manifest.json").write_text(json.dumps({"format": 1, "files": {}}))
    return p


def test_names_the_last_complete_checkpoint_and_the_resume_command(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, 4)
    checkpoint(out, 5)
    checkpoint(out, 6, complete=False)  # cut short by the interrupt: --resume passes it over
    assert interrupted_message(trainer(out, 7), COMMAND) == (
        f"interrupted at step 7; the last checkpoint is step 5 ({out}/checkpoints/step-00000005): "
        "continue with raymeta train --config 'my exp.yaml' meta.steps=20 --resume")


def test_before_the_first_checkpoint_the_run_starts_over(tmp_path):
    out = tmp_path / "run"
    assert interrupted_message(trainer(out, 0), COMMAND) == (
        "interrupted at step 0, before the first checkpoint: the run starts over from step 0 with "
        "raymeta train --config 'my exp.yaml' meta.steps=20")
    # the run has written files: starting over needs --overwrite
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')
    assert interrupted_message(trainer(out, 3), COMMAND).endswith(
        "step 3, before the first checkpoint: the run starts over from step 0 with raymeta train "
        "--config 'my exp.yaml' meta.steps=20 --overwrite")


def test_a_resume_interrupted_before_its_checkpoint_was_restored(tmp_path):
    out = tmp_path / "run"
    checkpoint(out, 5)
    assert interrupted_message(trainer(out, 0), COMMAND).startswith(
        "interrupted at step 5; the last checkpoint is step 5 (")


def test_a_storage_uri_names_the_checkpoint_under_the_uri_without_listing_it(tmp_path,
                                                                               monkeypatch):
    t = trainer(tmp_path / "staging", 9)
    t.outputs = SimpleNamespace(uri="s3://bucket/run", local=tmp_path / "staging",
                                shown=lambda p: f"s3://bucket/run/{Path(p).relative_to(t.out)}",
                                where=lambda name: f"s3://bucket/run/{name}")
    t.last_checkpoint = t.out / "checkpoints" / "step-00000008"
    assert interrupted_message(t, COMMAND) == (
        "interrupted at step 9; the last checkpoint is step 8 "
        "(s3://bucket/run/checkpoints/step-00000008): continue with raymeta train --config "
        "'my exp.yaml' meta.steps=20 --resume")
    # a --resume interrupted before it had pulled its checkpoint from the bucket
    t.step, t.last_checkpoint, t.resume = 0, None, True
    assert interrupted_message(t, COMMAND) == (
        "interrupted at step 0; the last checkpoint is the newest complete one under "
        "s3://bucket/run/checkpoints: continue with raymeta train --config 'my exp.yaml' "
        "meta.steps=20 --resume")
    # a new run's, before its first checkpoint: nothing in the bucket to start over past
    t.resume = False
    assert interrupted_message(t, COMMAND).endswith(
        "before the first checkpoint: the run starts over from step 0 with raymeta train --config "
        "'my exp.yaml' meta.steps=20")
