"""Seeds derived from ``(run seed, task, step)``: every random draw of a meta-step has its own, so
any process, any restart and any replay draws the same episodes, dropout masks and head inits.

crc32 of a string, never Python's ``hash()``, which is salted per process.
"""

from __future__ import annotations

import zlib

__all__ = ["head_seed", "step_seed"]


def head_seed(seed: int, task: str) -> int:
    """The seed of a task head's initialisation: it depends on nothing but (seed, task)."""
    return zlib.crc32(f"head:{seed}:{task}".encode())


def step_seed(seed: int, task: str, step: int) -> int:
    """Dropout RNG of (seed, task, step): any process, any restart, the same masks."""
    return zlib.crc32(f"step:{seed}:{task}:{step}".encode())
