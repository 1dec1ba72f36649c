"""Task actors once started: their state in the GCS (placed yet or not), ``ray.get`` that re-raises
a user error as itself, and ``ray.kill`` of a set of them."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import RaymetaError
from .gcs import ray_state

__all__ = ["actor_states", "unplaced", "get", "kill"]


def actor_states(actors: Mapping[str, Any]) -> dict[str, tuple[str | None, int]]:
    """Key -> (state, worker pid) of each of ``actors`` (key -> handle), as the GCS's actor table
    holds them (:func:`~raymeta.cluster.gcs.ray_state`'s ``actors``): state
    ``DEPENDENCIES_UNREADY``, ``PENDING_CREATION``, ``ALIVE``, ``RESTARTING`` or ``DEAD``; pid 0
    until a node has leased the actor a worker process (it is set while the constructor runs).
    (None, 0) for an actor the table cannot tell about."""
    state = ray_state()
    out: dict[str, tuple[str | None, int]] = {}
    for key, handle in actors.items():
        try:
            info = state.actors(handle._actor_id.hex()) or {}
        except Exception:
            info = {}
        out[key] = (info.get("State"), int(info.get("Pid") or 0))
    return out


def unplaced(actors: Mapping[str, Any]) -> list[str]:
    """Keys of ``actors`` (key -> handle) that Ray has not placed on a node yet: created, but still
    waiting for resources (:func:`actor_states`: not alive, restarting or dead, and no worker
    process yet). An actor the table cannot tell about counts as unplaced."""
    return [key for key, (state, pid) in actor_states(actors).items()
            if state not in ("ALIVE", "DEAD", "RESTARTING") and not pid]


def get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get`` that re-raises a user error from a remote call as itself: one line, no traceback.

    When one of several calls fails, the others' errors are read too (often they fail together:
    every rank of a process group aborts, or loses a peer). Ray logs each error nobody read,
    traceback and all."""
    import ray

    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayError as e:
        if isinstance(refs, list) and not isinstance(e, ray.exceptions.GetTimeoutError):
            _read_all(refs)
        if isinstance(e, ray.exceptions.RayTaskError) and isinstance(e.cause, RaymetaError):
            raise e.cause from None
        raise


def _read_all(refs: list[Any], timeout_s: float = 10.0) -> None:
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass


def kill(actors: Any) -> None:
    """``ray.kill`` each of ``actors`` (an iterable of handles), the ones already dead included. A
    process group ends with its members."""
    import ray

    for a in list(actors):
        try:
            ray.kill(a)
        except Exception:  # already dead
            pass
