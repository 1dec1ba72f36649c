"""From a few labelled rows to a classifier a user deploys: ``raymeta fit`` chooses an init and a
head by cross-validation and writes a classifier directory (:mod:`.fitting`), which
:class:`Classifier` loads (no Ray, no pickle) and ``raymeta predict`` applies to files as a Ray Data
job (:mod:`.predict`).

A layer above :mod:`raymeta.eval` (whose SetFit run and init resolution it shares) and
:mod:`raymeta.cluster`; nothing below imports it. Names load on first use, so that importing the
package loads no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Classifier", "FitResult", "FitSettings", "fit", "predict_file"]

_LAZY = {"Classifier": ".classifier", "FitResult": ".fitting", "fit": ".fitting",
         "FitSettings": ".heads", "predict_file": ".predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
