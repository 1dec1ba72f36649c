"""Out of memory in one line: Ray's memory-monitor error read into what was killed and how full the
node was; a killed task actor is a lost actor (restarted within the limit), and past the limit, or
outside the actors, the run ends in one line naming memory and the knobs. No Ray instance: the
errors are built as Ray raises them."""

from __future__ import annotations

import argparse

import pytest
import ray.exceptions

from raymeta import cli
from raymeta.cluster.oom import MEMORY_KNOBS, is_out_of_memory, out_of_memory_line
from raymeta.errors import RaymetaError
from raymeta.train.recovery import Recovery

# Ray 2.x's message (src/ray/raylet/node_manager.cc), abridged
RAY_OOM = ("Task was killed due to the node running low on memory.\nMemory on the node (IP: "
           "127.0.0.2, ID: 8c5a14) where the task (actor ID: 41617b, name=TaskActor.task_grad, "
           "pid=548, memory used=2.18GB) was running was 22.91GB / 23.98GB (0.955), which exceeds "
           "the memory usage threshold of 0.95. Ray killed this worker (ID: 0f7695) because it "
           "was the most recently scheduled task.\nTop 10 memory users:\nPID\tMEM(GB)\tCOMMAND\n"
           "548\t2.18\tray::TaskActor.task_grad\n")


def oom() -> ray.exceptions.OutOfMemoryError:
    return ray.exceptions.OutOfMemoryError(RAY_OOM)


def test_the_line_keeps_what_was_killed_and_the_figures():
    assert is_out_of_memory(oom()) and not is_out_of_memory(ValueError("x"))
    line = out_of_memory_line(oom())
    assert "\n" not in line
    assert line == ("out of memory: Ray's memory monitor killed 'TaskActor.task_grad' (it held "
                    "2.2 GB; the node was at 22.9 of 24.0 GB); use less memory: " + MEMORY_KNOBS)
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = oom()
    assert is_out_of_memory(wrapped)
    assert "killed a Ray worker; use less memory" in out_of_memory_line(
        ray.exceptions.OutOfMemoryError("no details"))


def _recovery(limit: int, lost: list[str], restarts: list[int]) -> Recovery:
    return Recovery(limit, lost=lambda: list(lost), restart=lambda: restarts.append(1),
                    step=lambda: 7)


def test_a_killed_actor_is_restarted_then_the_run_ends_in_one_line_naming_memory():
    restarts: list[int] = []
    rec = _recovery(1, ["bbc_news"], restarts)
    seen = []
    rec.recover(oom(), lambda names, step: seen.append((names, step)))
    assert restarts == [1] and seen == [("'bbc_news'", 7)]
    with pytest.raises(RaymetaError) as e:
        rec.recover(oom(), lambda names, step: None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task 'bbc_news': at step 7, out of memory: ")
    assert "its actor (it held 2.2 GB" in msg and msg.endswith(
        "; no restarts left (checkpoint.max_actor_restarts=1)")


def test_out_of_memory_with_every_actor_alive_is_one_line_too():
    with pytest.raises(RaymetaError, match=r"^step 7: out of memory: Ray's memory monitor "
                                           r"killed 'TaskActor.task_grad'"):
        _recovery(3, [], []).recover(oom(), lambda names, step: None)
    other = ray.exceptions.RayError("something else")
    with pytest.raises(ray.exceptions.RayError, match="something else"):  # not ours to reword
        _recovery(3, [], []).recover(other, lambda names, step: None)


def test_the_cli_says_out_of_memory_in_one_line(monkeypatch, capsys):
    def command(args: argparse.Namespace) -> int:
        raise oom()

    monkeypatch.setattr(cli, "_cmd_config_show", command)
    assert cli.main(["config", "show", "starter"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("raymeta: error: out of memory: ")
