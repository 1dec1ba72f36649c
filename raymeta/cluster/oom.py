"""Running out of memory, said in one line.

Ray's memory monitor kills a worker when its node's memory passes ``RAY_memory_usage_threshold``
(0.95 by default); the caller then gets ``ray.exceptions.OutOfMemoryError`` (or, for an actor, an
``ActorDiedError`` whose cause is that kill), whose message is a page: the node, the worker, the
top memory users, Ray's advice. :func:`out_of_memory_line` keeps what a user acts on: what was
killed, how much it held, how full the node was, and raymeta's knobs that use less memory.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MEMORY_KNOBS", "is_out_of_memory", "out_of_memory_line"]

# what uses less memory per actor or fewer actors, in the order a user would try them
MEMORY_KNOBS = ("resources.workers (tasks share a process), fewer tasks or replicas, "
                "model.trainable: lora, a smaller max_length, "
                "or stop other jobs on the machine")

_DETAIL = re.compile(r"name=(?P<name>[^,]+), pid=\d+, memory used=(?P<used>[\d.]+)GB\) was "
                     r"running was (?P<node>[\d.]+)GB / (?P<total>[\d.]+)GB")


def _chain(err: BaseException) -> list[BaseException]:
    out = [err]
    while (nxt := out[-1].__cause__ or out[-1].__context__) is not None and nxt not in out:
        out.append(nxt)
    cause = getattr(err, "cause", None)  # RayTaskError / ActorDiedError carry Ray's cause
    if isinstance(cause, BaseException) and cause not in out:
        out.append(cause)
    return out


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is Ray's memory monitor killing a worker."""
    for e in _chain(err):
        if type(e).__name__ == "OutOfMemoryError":
            return True
        text = str(e)
        if type(e).__name__ in ("ActorDiedError", "RayActorError") and (
                "running low on memory" in text or "due to memory pressure" in text
                or "OutOfMemoryError" in text):
            return True
    return False


def out_of_memory_line(err: BaseException, what: str | None = None) -> str:
    """One line: ``what`` (or the killed worker's name) ran out of memory, with the figures Ray
    gave and the knobs to turn."""
    found: dict[str, Any] = {}
    for e in _chain(err):
        m = _DETAIL.search(str(e))
        if m:
            found = m.groupdict()
            break
    who = what or (f"'{found['name'].strip()}'" if found else "a Ray worker")
    figures = (f" (it held {float(found['used']):.1f} GB; the node was at "
               f"{float(found['node']):.1f} of {float(found['total']):.1f} GB)") if found else ""
    return (f"out of memory: Ray's memory monitor killed {who}{figures}; use less memory: "
            f"{MEMORY_KNOBS}")
