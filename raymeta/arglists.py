"""Comma-separated command-line values (``--shots 4,8,16``, ``--models minilm,tiny``), one-line
errors.

Its own module, below both :mod:`raymeta.cli` and :mod:`raymeta.speed.bench`, so that neither
imports the other.
"""

from __future__ import annotations

from .errors import RaymetaError

__all__ = ["positive_ints", "shot_counts", "names"]


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
