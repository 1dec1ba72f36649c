"""SIGTERM to `raymeta train` (what a scheduler, `kill` or Kubernetes sends): one line on stderr
naming the step, the last checkpoint and the command that continues the run; exit 143; no traceback
and no C++ stack dump from Ray's failure-signal handler. The command it prints then continues the
run from that checkpoint to the end. Ctrl-C (SIGINT, exit 130) ends the same way:
test_reliability.py."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import time
from pathlib import Path

import pytest

from raymeta.core.checkpoint import latest_checkpoint

from .conftest import tiny_config, write_config

STEPS = 20
LINE = re.compile(r"raymeta: interrupted at step (\d+); the last checkpoint is step (\d+) "
                  r"\((.+)\): continue with (raymeta train .+ --resume)")


# slow tier (CI runs it): a train, its SIGTERM and the resumed run; the line itself is
# tests/unit/test_interrupted.py's, and Ctrl-C end to end test_reliability.py's (default suite)
@pytest.mark.slow
def test_sigterm_names_the_last_checkpoint_and_its_resume_command_continues(ray_local, mixed_data,
                                                                            cli, tmp_path):
    data = tiny_config(tmp_path, mixed_data, algorithm="reptile", steps=STEPS, inner_steps=1)
    data["tasks"] = data["tasks"][:1]
    data["checkpoint"] = {"every_steps": 1, "keep_last": 2}
    out = tmp_path / "run"
    # It joins this test process's Ray instance (as a job's driver joins its cluster): a local
    # instance of its own, and another for the resume, would cost seconds each on 2 CPUs. The
    # driver's failure-signal handler is the same either way; test_ray_output.py sends SIGTERM to a
    # driver that started its own.
    address = ray_local.get_runtime_context().gcs_address
    proc = cli.start(["train", "--config", write_config(tmp_path, data), "--address", address],
                     cwd=tmp_path)
    try:
        end = time.monotonic() + 240
        while (latest_checkpoint(out, warn=False) is None and cli.poll(proc) is None
               and time.monotonic() < end):
            time.sleep(0.2)
        assert cli.poll(proc) is None, proc.stderr.read_text()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        r = cli.finish(proc, timeout=90)
    finally:
        cli.kill(proc)
    assert r.returncode == 143, r.stderr[-3000:]
    assert "SIGTERM received" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "\x1b[" not in r.stderr  # its stderr is a file: no colour codes
    last = r.stderr.rstrip().splitlines()[-1]
    m = LINE.fullmatch(last)
    assert m, last
    at, step, where, command = int(m[1]), int(m[2]), Path(m[3]), m[4]
    assert where == latest_checkpoint(out) and where.name == f"step-{step:08d}"
    assert 1 <= step <= at < STEPS
    # the command printed, as printed: it continues from that checkpoint to the end
    argv = shlex.split(command)
    assert argv[:2] == ["raymeta", "train"] and argv[-3:] == ["--address", address, "--resume"]
    again = cli.run(argv[1:], cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {where} at step {step}" in again.stderr, again.stderr[-3000:]
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS))  # none skipped, none logged twice
    assert (out / "final" / "model.safetensors").is_file()
