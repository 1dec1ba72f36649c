"""Recovery from a lost task actor: restart every actor, go back to the last checkpoint, replay.

Around the loop, never inside it: :meth:`Recovery.run` calls the loop again after each recovery.
Every actor restarts, not only the lost one: a process group cannot re-form around a lost rank,
and the survivors' heads have moved past the checkpoint. Replays are bit-exact, since every random
draw derives from (seed, task, step). A Ray error with every actor alive is re-raised as it is;
an actor that dies while the actors restart costs one more restart (the same limit), not a
traceback. Past ``checkpoint.max_actor_restarts`` the run ends in one line naming the task.

An actor that Ray's memory monitor killed is a lost actor like any other (it is restarted, within
the same limit); when no restart is left, or when the kill hit something other than a task actor,
the one line says that memory was the cause and what to change
(:func:`raymeta.cluster.oom.out_of_memory_line`), instead of Ray's page-long error.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from ..cluster.oom import is_out_of_memory, out_of_memory_line
from ..errors import RaymetaError

__all__ = ["Recovery"]

log = logging.getLogger("raymeta.train")

T = TypeVar("T")


def _names(keys: list[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys)


class Recovery:
    """Counts the restarts of one run against ``limit`` (``checkpoint.max_actor_restarts``).

    ``lost()``: the keys of the actors that died; ``restart()``: every actor anew, back at the last
    checkpoint (or the initial weights); ``step()``: the step being taken."""

    def __init__(self, limit: int, *, lost: Callable[[], list[str]], restart: Callable[[], None],
                 step: Callable[[], int]):
        self.limit, self.lost, self.restart, self.step = limit, lost, restart, step
        self.restarts = 0

    def run(self, attempt: Callable[[], T], on_recovered: Callable[[str, int], None]) -> T:
        """``attempt()``, again after each recovery until it returns; ``on_recovered(names, step)``
        after each (the lost actors' names, the step the error came at)."""
        import ray

        while True:
            try:
                return attempt()
            except ray.exceptions.RayError as e:
                self.recover(e, on_recovered)

    def recover(self, err: Exception, on_recovered: Callable[[str, int], None]) -> None:
        """Restart every actor after ``err``, or re-raise it when no actor died."""
        import ray

        lost = self.lost()
        step = self.step()
        oom = is_out_of_memory(err)
        if not lost:
            if oom:
                raise RaymetaError(f"step {step}: {out_of_memory_line(err)}") from None
            raise err
        names = latest = _names(lost)  # latest: the ones that died last (maybe while restarting)
        if oom:
            log.warning("task %s: %s; back to the last checkpoint", names,
                        out_of_memory_line(err, "its actor"))
        while True:
            if self.restarts >= self.limit:
                if oom:
                    raise RaymetaError(f"task {latest}: at step {step}, "
                                       f"{out_of_memory_line(err, 'its actor')}; no restarts left "
                                       f"(checkpoint.max_actor_restarts={self.limit})") from None
                raise RaymetaError(f"task {latest}: actor died at step {step}, no restarts left "
                                   f"(checkpoint.max_actor_restarts={self.limit})") from None
            self.restarts += 1
            try:
                self.restart()
                break
            except ray.exceptions.RayError as again:
                lost = self.lost()
                if not lost:
                    raise again
                latest = _names(lost)
                log.warning("task %s: actor died while the task actors restarted "
                            "(restart %d of %d)", latest, self.restarts, self.limit)
        on_recovered(names, step)
