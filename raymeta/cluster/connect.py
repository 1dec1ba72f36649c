"""Connecting to Ray: join a cluster's address, or start a local instance on loopback. The one place
that decides addresses."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import RaymetaError

__all__ = ["connect", "own_instance", "LOCAL_NODE_IP"]

# Ray turns 127.0.0.1 into the machine's interface address; any other loopback address is
# kept as given, so the embedded default really stays on loopback (see SECURITY.md).
LOCAL_NODE_IP = os.environ.get("RAYMETA_NODE_IP", "127.0.0.2")
# the GCS address of the local instance connect() started in this process
_own_gcs: str | None = None


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local instance on loopback.

    Returns True when this call started Ray (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        _token_auth_for_joining()
        _probe(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).splitlines()[0][:160]
            raise RaymetaError(
                f"--address {address}: cannot connect to a Ray cluster ({first})") from None
    else:
        # address="local": always a fresh instance; plain ray.init() would join the last cluster
        # `ray start` left on this machine (even a dead one, and then hang on it).
        ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, dashboard_host="127.0.0.1",
                 num_cpus=num_cpus, include_dashboard=False, **kwargs)
        global _own_gcs
        _own_gcs = ray.get_runtime_context().gcs_address
    return True


def own_instance() -> bool:
    """Whether the Ray cluster this process is connected to is the local instance :func:`connect`
    started here (a fixed-size one, on this machine), not one it joined."""
    import ray

    try:
        return (_own_gcs is not None and ray.is_initialized()
                and ray.get_runtime_context().gcs_address == _own_gcs)
    except Exception:
        return False


def _token_auth_for_joining() -> None:
    """A client that joins a cluster with token authentication (Ray 2.60's default) must say so:
    Ray turns token mode on by itself only for an instance it starts, never for an explicit
    address. ``RAY_AUTH_MODE`` set by the user wins (``disabled`` for a cluster without tokens).
    Ray reads the mode into its cached config when ``ray`` is imported, which in ``raymeta`` has
    happened by now, so the cache is refreshed too, as Ray's own ``ray.init()`` does when it
    enables token mode for a new local instance."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"  # also for the processes this one starts
    Config.initialize("")


def _probe(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds, not minutes, when nothing listens at ``host:port`` (ray.init would retry for
    long)."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RaymetaError(f"--address {address}: expected host:port (or ray://host:port)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise RaymetaError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e})") from None
