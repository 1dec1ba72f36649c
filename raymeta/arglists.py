"""Command-line words: deprecated command names (renamed before parsing), and comma-separated
values (``--shots 4,8,16``, ``--models minilm,tiny``) with one-line errors.

Its own module, below both :mod:`raymeta.cli` and :mod:`raymeta.speed.bench`, so that neither
imports the other.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .errors import RaymetaError

__all__ = ["positive_ints", "shot_counts", "names", "rename_deprecated",
           "DEPRECATED_COMMANDS"]


def positive_ints(text: str) -> list[int]:
    """``"4,8,16"`` → ``[4, 8, 16]``; anything else (empty, non-integer, < 1) is a
    :class:`RaymetaError`."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RaymetaError("expected comma-separated integers such as 4,8,16, got "
                           f"'{text}'") from None
    if not vals or min(vals) < 1:
        raise RaymetaError(f"expected positive integers, got '{text}'")
    return vals


def shot_counts(text: str, zero_ok: bool = False) -> list[int]:
    """K values for ``--shots``: :func:`positive_ints`, and 0 too when ``zero_ok`` (zero-shot with a
    label prior); a 0 without it names the flag that allows it."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RaymetaError("expected comma-separated integers such as 4,8,16, got "
                           f"'{text}'") from None
    if vals and min(vals) == 0 and not zero_ok:
        raise RaymetaError("--shots 0 (zero-shot) needs --label-prior WEIGHT (> 0): the label "
                           "names are the prototypes")
    if not vals or min(vals) < 0:
        raise RaymetaError(f"expected non-negative integers, got '{text}'")
    return vals


def names(text: str) -> list[str]:
    """``"minilm, tiny"`` → ``["minilm", "tiny"]`` (blanks dropped)."""
    return [x.strip() for x in text.split(",") if x.strip()]


DEPRECATED_COMMANDS = {"bench": "speed"}


def rename_deprecated(argv: Sequence[str]) -> list[str]:
    """``argv`` with a deprecated command name replaced by its new one, after a warning on stderr.

    Done before parsing so that ``raymeta bench --help`` warns too (argparse exits inside parsing),
    and so that the old name stays out of ``raymeta --help``. The command is the first word that is
    not an option: the only option before it, ``-v``, takes no value."""
    argv = list(argv)
    i = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if i is not None and argv[i] in DEPRECATED_COMMANDS:
        new = DEPRECATED_COMMANDS[argv[i]]
        print(f"raymeta: warning: `raymeta {argv[i]}` is deprecated and will be removed in the "
              f"next release; use `raymeta {new}`", file=sys.stderr)
        argv[i] = new
    return argv
