"""Strict JSON for every file raymeta writes (results.json, metrics.jsonl, trainer_state.json,
best.json, ...).

Python's :mod:`json` writes a bare ``NaN`` or ``Infinity`` for a non-finite float, which strict JSON
readers (jq, JavaScript, ``json.loads(..., parse_constant=...)``, pandas) reject.
:func:`strict_json` turns every such number into ``null`` and lists where they were, as dotted keys,
under ``"nonfinite"`` of the top-level object (``"nonfinite": ["tasks.sst2.shots.8.ci95"]``: a 95%
CI from one split is undefined). :func:`dumps` serialises with ``allow_nan=False``, so a non-finite
number that got past the cleaning is an error, never a bare ``NaN``.
``tests/unit/test_strict_json.py`` checks that no ``json.dump``/``json.dumps`` call in raymeta
bypasses this.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["NONFINITE_KEY", "strict_json", "dumps", "write_json_atomic"]

# top-level key: the dotted paths of the values written as null (they were NaN or ±Inf)
NONFINITE_KEY = "nonfinite"


def strict_json(data: Any) -> Any:
    """``data`` as strict JSON allows it: every NaN or ±Inf float (numpy's too) becomes ``None``;
    when ``data`` is a dict and any did, ``data["nonfinite"]`` lists their dotted paths
    (``["loss.cls", "grad_norm"]``)."""
    where: list[str] = []

    def clean(x: Any, path: str) -> Any:
        if isinstance(x, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(x)]
        if isinstance(x, float) or (hasattr(x, "dtype") and getattr(x, "ndim",
                                                                    None) == 0
                                    and x.dtype.kind == "f"):
            f = float(x)  # a numpy scalar becomes a Python float, which json writes
            if not math.isfinite(f):
                where.append(path)
                return None
            return f
        return x

    out = clean(data, "")
    if where and isinstance(out, dict):
        # in order, once
        out[NONFINITE_KEY] = list(dict.fromkeys([*(out.get(NONFINITE_KEY) or []), *where]))
    return out


def dumps(data: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` ``(data)``, with ``allow_nan=False``; other keyword
    arguments pass on."""
    return json.dumps(strict_json(data), allow_nan=False, **kwargs)


def write_json_atomic(path: str | Path, data: Any, **kwargs: Any) -> Path:
    """Write ``data`` as strict JSON (``indent=1`` unless given), atomically: a temporary file, then
    a rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(dumps(data, **{"indent": 1, **kwargs}))
    os.replace(tmp, p)
    return p
