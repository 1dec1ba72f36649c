"""Run ``raymeta`` command lines as separate processes without paying Python's start-up for each.

A server process imports the CLI and what its commands import (torch, transformers, Ray, datasets:
seconds on 2 CPUs) once, then forks one child per command line. The child is a process of its own,
as ``python -m raymeta.cli ...`` would be: its own stdout and stderr (files), working directory,
exit code, and its own Ray instance if the command starts one; only the imports are inherited. The
server never runs torch or Ray itself, so it holds no threads a fork could break.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CliForks", "Completed", "Started"]

SERVER = r"""
import json, os, signal, sys, traceback

import raymeta.cli  # noqa: F401  what every command imports, paid once
import raymeta.config, raymeta.eval.evaluate, raymeta.train.trainer  # noqa: E401,F401

for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        # Ctrl-C raises KeyboardInterrupt, as in a fresh `python -m` (a shell without job control,
        # CI under nohup, starts background jobs with SIGINT ignored, and this server inherited
        # that)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.chdir(req["cwd"])
        try:
            code = raymeta.cli.main(req["argv"])
        except SystemExit as e:  # argparse and the like, as under `python -m`
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # what the interpreter would print and exit with
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


@dataclass
class Started:
    """What :meth:`CliForks.start` started: its output is in the files while it runs."""

    pid: int  # the command's own process (to signal)
    argv: list[str]
    stdout: Path
    stderr: Path
    returncode: int | None = None  # once it has exited (CliForks.poll / finish)


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


class CliForks:
    """``run(argv, cwd=..., timeout=...)`` → :class:`Completed`, like ``subprocess.run([python, -m,
    raymeta.cli, *argv])``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.n = 0
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     bufsize=0, env=self.environment())

    @staticmethod
    def environment() -> dict[str, str]:
        """This process's environment less what Ray put there when this process started its instance
        (``RAY_AUTH_MODE``) or a caller's ``RAY_ADDRESS``: a command line runs as from a user's
        shell."""
        return {**{k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE",
                                                                    "RAY_ADDRESS")},
                "PYTHONUNBUFFERED": "1"}

    def _line(self, timeout: float) -> str:
        """One line from the server, read a byte at a time: a buffered reader could take the next
        line too, and select() would then wait for bytes that have already arrived."""
        fd, end, line = self.proc.stdout.fileno(), time.monotonic() + timeout, b""
        while not line.endswith(b"\n"):
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            byte = os.read(fd, 1)
            if not byte:
                raise RuntimeError(f"the CLI fork server ended (exit {self.proc.wait()})")
            line += byte
        return line.decode()

    def run(self, argv: list[str], *, cwd: Path, timeout: float = 180) -> Completed:
        return self.finish(self.start(argv, cwd=cwd), timeout=timeout)

    def start(self, argv: list[str], *, cwd: Path) -> Started:
        """Start one command line and return at once (one at a time: :meth:`finish` it before the
        next)."""
        self.n += 1
        out, err = self.workdir / f"cli-{self.n}.out", self.workdir / f"cli-{self.n}.err"
        request = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        return Started(int(self._line(60)), argv, out, err)

    def poll(self, started: Started) -> int | None:
        """``started``'s exit code once it has exited (the server has reaped it), else None, at
        once."""
        if started.returncode is None and select.select([self.proc.stdout.fileno()], [], [], 0)[0]:
            started.returncode = int(self._line(60))  # the server writes the whole line at once
        return started.returncode

    def kill(self, started: Started) -> int:
        """SIGKILL ``started`` unless it has exited; its exit code."""
        if self.poll(started) is None:
            with contextlib.suppress(ProcessLookupError):  # (it may have ended just now)
                os.kill(started.pid, signal.SIGKILL)
        return self.finish(started, timeout=60).returncode

    def finish(self, started: Started, *, timeout: float = 180) -> Completed:
        """Wait for ``started`` to exit; one still running after ``timeout`` is killed and fails the
        test."""
        try:
            code = (started.returncode if started.returncode is not None
                    else int(self._line(timeout)))
            started.returncode = code
        except TimeoutError:  # a hang is a failure, as subprocess.run(timeout=...) makes it one
            with contextlib.suppress(ProcessLookupError):  # (it may have ended just now)
                os.kill(started.pid, signal.SIGKILL)
            # the server reaps it and reports its exit: the next request starts clean
            self._line(60)
            raise AssertionError(f"raymeta {' '.join(started.argv)}: no exit within {timeout:g} s; "
                                 f"stderr: {started.stderr.read_text()[-2000:]}") from None
        return Completed(code, started.stdout.read_text(), started.stderr.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
