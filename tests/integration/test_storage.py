"""A run's data and outputs on object storage (a real S3-protocol server on loopback:
tests/s3server.py), and checkpoints that went wrong on a local disk: damaged after they were
written, or not written at all (disk full).

Each run is compared bit for bit with an uninterrupted run of the same config on a local disk."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raymeta import storage
from raymeta.config import load_config
from raymeta.core.checkpoint import MANIFEST, latest_checkpoint
from raymeta.errors import RaymetaError
from raymeta.eval.evaluate import evaluate, resolve_eval_task, resolve_init
from raymeta.eval.finetune import FinetuneSettings
from raymeta.train.trainer import MetaTrainer

from ..s3server import SECRET
from .conftest import driver_killed_at, tiny_config, validation_on, write_config

STEPS = 6


def config(tmp: Path, data_dir: str, output_dir: str, val_file: Path) -> dict:
    data = tiny_config(tmp, data_dir, algorithm="fomaml", inner_steps=1, steps=STEPS)
    data["tasks"] = data["tasks"][:2]
    data["output_dir"] = output_dir
    data["checkpoint"] = {"every_steps": 2, "keep_last": 2}
    data["eval"] = {"validation": validation_on(val_file, every_steps=2)}
    return data


def run(data: dict, task_actors, **kw):
    cfg = load_config(data=data)
    return MetaTrainer(cfg, actors=task_actors(cfg), **kw).run()


def final_of(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"


@pytest.fixture(scope="module")
def straight(task_actors, mixed_data, val_file, tmp_path_factory) -> dict[str, torch.Tensor]:
    tmp = tmp_path_factory.mktemp("straight")
    return final_of(run(config(tmp, str(mixed_data), str(tmp / "run"), val_file), task_actors))


def test_a_run_on_s3_loses_its_head_and_resumes_from_the_bucket_bit_equal(straight, task_actors,
                                                                          mixed_data, val_file,
                                                                         s3, tmp_path, monkeypatch,
                                                                          caplog):
    """Task files read from the bucket by the actors; every output written to it. The driver dies
    after the checkpoint of step 4 and its local staging directory goes with it (a replaced head
    node): the resume has only the bucket. Then ``raymeta evaluate --init s3://.../run`` scores the
    run's ``best``."""
    monkeypatch.setenv("RAYMETA_STAGING_DIR", str(tmp_path / "staging"))
    bucket = s3()
    storage.upload(mixed_data, storage.join(bucket, "data"))
    out = storage.join(bucket, "runs", "one")
    data = config(tmp_path, storage.join(bucket, "data"), out, val_file)
    with caplog.at_level(logging.INFO, logger="raymeta"):
        with driver_killed_at(monkeypatch, 4):
            run(data, task_actors)
        assert not any((tmp_path / "staging").iterdir())  # nothing local survives the driver
        listed = storage.listing(storage.join(out, "checkpoints"))
        assert sorted(listed) == ["step-00000002", "step-00000004"]
        final = run(data, task_actors, resume=True)
    assert final == storage.join(out, "final")
    same(final_of(storage.download(final, tmp_path / "final")), straight)
    assert not any((tmp_path / "staging").iterdir())
    steps = [json.loads(ln)["step"]
             for ln in storage.read_bytes(storage.join(out, "metrics.jsonl")).decode().splitlines()
             if json.loads(ln).get("kind") != "validation"]
    assert steps == list(range(STEPS))  # no step twice, none lost
    assert {"config.yaml", "tensorboard", "best", "final",
            "checkpoints"} <= set(storage.listing(out))
    # keep_last: 2, manifests last; the secret is in no object and no log line
    assert sorted(storage.listing(storage.join(out, "checkpoints"))) == ["step-00000004",
                                                                         "step-00000006"]
    everything = storage.download(out, tmp_path / "all")
    assert all(SECRET.encode() not in p.read_bytes() for p in everything.rglob("*") if p.is_file())
    assert SECRET not in caplog.text
    # evaluate --init on the run's URI: its best/, fetched where it is loaded
    init = resolve_init(out)
    assert init == storage.join(out, "best")
    d = tmp_path / "fruit_weather_music"
    d.mkdir()
    rows = [{"text": f"{w} {i}", "label": w} for i in range(6) for w in ("apple", "rain", "piano")]
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = evaluate(init, [resolve_eval_task(str(d))], shots=[2], n_splits=1, seed=0, data_dir=".",
                   cache_dir=None,
                   settings=FinetuneSettings(steps=2, max_test=12, batch_size=8), progress=False)
    assert 0.0 <= res["tasks"]["fruit_weather_music"]["shots"]["2"]["mean"] <= 1.0


def test_missing_bucket_is_one_line_naming_the_uri_and_nothing_is_written_locally(cli, s3,
                                                                                  mixed_data,
                                                                                  val_file,
                                                                                  tmp_path):
    s3()  # the server runs; this bucket is not on it
    uri = "s3://raymeta-no-such-bucket/run"
    cfg = write_config(tmp_path, config(tmp_path, str(mixed_data), uri, val_file))
    r = cli.run(["train", "--config", cfg], cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (f"raymeta: error: output_dir {uri}: cannot write: "
                                            "the bucket 'raymeta-no-such-bucket' does not exist "
                                            "(create it first)"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_damaged_latest_checkpoint_resumes_from_the_one_before_bit_equal(straight, task_actors,
                                                                         mixed_data, val_file,
                                                                         tmp_path, monkeypatch,
                                                                         caplog):
    out = tmp_path / "run"
    data = config(tmp_path, str(mixed_data), str(out), val_file)
    with driver_killed_at(monkeypatch, 5):
        run(data, task_actors)
    newest = out / "checkpoints" / "step-00000004"
    f = newest / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="raymeta"):
        same(final_of(run(data, task_actors, resume=True)), straight)
    assert any("step-00000004" in r.getMessage() and str(f) in r.getMessage()
               for r in caplog.records), caplog.text
    # no complete checkpoint at all: one line, and the run does not start over
    for p in (out / "checkpoints").glob("step-*"):
        (p / MANIFEST).unlink()
    with pytest.raises(RaymetaError,
                       match="^--resume: no complete checkpoint to resume from under output_dir"):
        run(data, task_actors, resume=True)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_run_resumes_bit_equal(straight,
                                                                               task_actors,
                                                                               mixed_data,
                                                                              val_file, tmp_path,
                                                                               monkeypatch):
    from raymeta.core import checkpoint

    out = tmp_path / "run"
    data = config(tmp_path, str(mixed_data), str(out), val_file)
    real, calls = checkpoint.save_file, []

    def fills_up(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint of step 4
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    with pytest.raises(RaymetaError,
                       match=r"step-00000004: cannot be written \(No space left on device\); the "
                       r"previous "
                                           r"one, step-00000002, is intact: free space, then "
                       r"--resume"):
        run(data, task_actors)
    assert latest_checkpoint(out).name == "step-00000002"
    monkeypatch.setattr(checkpoint, "save_file", real)
    same(final_of(run(data, task_actors, resume=True)), straight)


@pytest.mark.slow  # a Tune search: a minute or more on 2 CPUs
def test_tune_with_output_dir_on_s3_keeps_its_experiment_and_report_in_the_bucket(ray_local, s3,
                                                                                  tmp_path,
                                                                                   monkeypatch):
    from raymeta.tune.search import run_tune

    from .test_tune import one_task, tune_config

    monkeypatch.setenv("RAYMETA_STAGING_DIR", str(tmp_path / "staging"))
    d = tmp_path / "data"
    d.mkdir()
    for name, topics, n in (("big.csv", ["sport", "music", "travel", "food"], 24), ("val.csv",
                                                                                    ["rain", "snow",
                                                                                     "sun"], 8),
                            ("test.csv", ["cats", "dogs", "birds"], 8)):
        rows = ["text,label"] + [f"a line about {t} and item {i} of {n},{t}" for i in range(n)
                                 for t in topics]
        (d / name).write_text("\n".join(rows) + "\n")
    (d / "small.csv").write_text((d / "big.csv").read_text())
    data = one_task(tune_config(tmp_path, d, num_samples=2))
    del data["tune"]["storage_path"]  # default: <output_dir>/tune, in the bucket
    out = storage.join(s3(), "search")
    data["output_dir"] = out
    summary = run_tune(load_config(data=data))
    assert summary["files"]["best_model"] == storage.join(out, "best_model")
    assert {"tune", "best_model", "best_config.yaml", "tune_summary.json",
            "tune_plan.json"} <= set(storage.listing(out))
    # Tune's own experiment state, in the bucket
    assert storage.listing(storage.join(out, "tune", "it"))
    best_cfg = storage.read_bytes(storage.join(out, "best_config.yaml")).decode()
    assert f"output_dir: {out}/best_run" in best_cfg
    assert not any((tmp_path / "staging").iterdir())


# `raymeta train` as the CLI runs it, except that the process SIGKILLs itself in the middle of
# uploading the checkpoint of step argv[1] (before the argv[2]-th of its files is copied: its
# manifest, the last, never is).
KILLED_MID_UPLOAD = """
import os, signal, sys

import pyarrow.fs

import raymeta.cli

step, nth, seen = f"step-{int(sys.argv[1]):08d}/", int(sys.argv[2]), []
copy = pyarrow.fs.copy_files

def copy_or_die(source, destination, *a, **k):
    # into the bucket
    if step in destination and destination.startswith(tuple("abcdefghijklmnopqrstuvwxyz")):
        seen.append(destination)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return copy(source, destination, *a, **k)

pyarrow.fs.copy_files = copy_or_die
sys.exit(raymeta.cli.main(sys.argv[3:]))
"""


@pytest.mark.slow  # a Ray head of its own that outlives the driver, and two driver processes
def test_driver_sigkilled_mid_upload_resumes_from_the_bucket_bit_equal(straight, s3, mixed_data,
                                                                       val_file, tmp_path):
    """An object store has no rename: the checkpoint being uploaded when the driver dies is in the
    bucket without its manifest. ``--resume`` (a new process, a new staging directory: the head's
    disk is gone too) passes over it, naming its missing manifest, and goes back to the one before;
    the run ends bit-equal."""
    import subprocess
    import sys

    from .cluster import env, head

    out = storage.join(s3(), "killed")
    with head(tmp_path) as h:
        data = config(tmp_path, str(mixed_data), out, val_file)
        data["resources"]["address"] = h["address"]
        cfg = write_config(tmp_path, data)
        e = env() | {"RAYMETA_STAGING_DIR": str(tmp_path / "staging")}
        killed = subprocess.run([sys.executable, "-c", KILLED_MID_UPLOAD, "4", "3", "train",
                                 "--config", cfg],
                                env=e, capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-3000:]
        partial = storage.listing(storage.join(out, "checkpoints", "step-00000004"), recursive=True)
        # two of its files are there, the manifest is not
        assert partial and MANIFEST not in partial
        resumed = subprocess.run([sys.executable, "-m", "raymeta.cli", "train", "--config", cfg,
                                  "--resume"], env=e,
                                 capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {out}/checkpoints/step-00000004/{MANIFEST} is incomplete" in resumed.stderr
    assert f"resumed from {out}/checkpoints/step-00000002 at step 2" in resumed.stderr
    same(final_of(storage.download(storage.join(out, "final"), tmp_path / "final")), straight)
