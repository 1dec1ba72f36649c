"""What a process that connects to Ray through :func:`raymeta.cluster.connect` shows on pipes (a job
log, CI): no colour codes in Ray's worker-log prefixes, no notice telling the user to turn token
authentication off (the instance still has it on), and on SIGTERM no C++ stack dump from Ray's
failure-signal handler. A real process with its stdout and stderr on pipes; its own local
instance."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..cli_forks import CliForks

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, sys, time

import ray

from raymeta.cluster.connect import connect, interrupt_exit_code

connect(num_cpus=1)
print("auth mode:", os.environ.get("RAY_AUTH_MODE"), file=sys.stderr, flush=True)


@ray.remote(num_cpus=0)
class Talker:
    def say(self):
        print("hello on stderr", file=sys.stderr, flush=True)
        print("hello on stdout", flush=True)


try:
    ray.get(Talker.remote().say.remote())
    time.sleep(300)  # until the test has seen the worker's lines and sends SIGTERM
except KeyboardInterrupt as e:  # raymeta.cluster.connect.Terminated
    # Terminated; a plain KeyboardInterrupt when it came while ray.get waited
    print("interrupted", file=sys.stderr, flush=True)
    sys.exit(interrupt_exit_code(e))
"""


# slow tier (CI runs it): a Ray instance of its own; the switches themselves are
# tests/unit/test_connect.py's
@pytest.mark.slow
def test_worker_logs_on_pipes_have_no_colour_and_no_token_notice_and_sigterm_no_dump():
    env = {k: v for k, v in CliForks.environment().items() if k not in ("RAY_COLOR_PREFIX",
                                                                         "NO_COLOR")}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    got = {proc.stdout: b"", proc.stderr: b""}
    try:
        end = time.monotonic() + 150
        # the worker's lines come back through the driver's log printer, one to each stream
        while (not (b"hello on stderr" in got[proc.stderr]
                    and b"hello on stdout" in got[proc.stdout])
               and time.monotonic() < end and proc.poll() is None):
            for f in select.select(list(got), [], [], 1.0)[0]:
                got[f] += os.read(f.fileno(), 1 << 16)
        assert b"hello on stdout" in got[proc.stdout], got
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = (got[proc.stderr] + err).decode(errors="replace")
    out = (got[proc.stdout] + out).decode(errors="replace")
    assert "(Talker pid=" in err and "(Talker pid=" in out, err[-3000:] + out[-3000:]
    assert "\x1b[" not in err and "\x1b[" not in out, repr(err[-3000:] + out[-3000:])
    assert "Token authentication is enabled" not in err and "RAY_AUTH_MODE=disabled" not in err
    assert "auth mode: token" in err  # silenced, not switched off
    assert proc.returncode == 143 and "interrupted" in err, err[-3000:]
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-3000:]
