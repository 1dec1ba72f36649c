"""Waiting on a round of Ray tasks: ``raymeta evaluate``'s scoring runs and ``raymeta fit``'s
cross-validation folds."""

from __future__ import annotations

from typing import Any

from ..errors import RaymetaError

__all__ = ["gather"]


def gather(refs: list[Any], progress: bool, desc: str) -> list[Any]:
    """The results of Ray task ``refs``, in order, with a progress bar on stderr (``progress``). The
    first task to fail cancels the rest; a :class:`RaymetaError` it raised comes back as itself
    (one line), anything else as Ray's error."""
    import sys

    import ray
    from tqdm import tqdm

    done: dict[Any, Any] = {}
    pending = list(refs)
    # stderr, and closed (its line erased) before the caller prints the results table to stdout
    with tqdm(total=len(refs), desc=desc, disable=not progress, leave=False,
              file=sys.stderr) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                done[ready[0]] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                for r in pending:
                    ray.cancel(r, force=True)
                cause = e.as_instanceof_cause()
                if isinstance(cause, RaymetaError):
                    raise type(cause)(str(cause)) from None
                raise
            bar.update(1)
    return [done[r] for r in refs]
