"""Connecting to Ray: join a cluster's address, or start a local instance on loopback. The one place
that decides addresses."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from ..errors import RaymetaError

__all__ = ["connect", "own_instance", "LOCAL_NODE_IP", "Terminated", "START_HINT",
           "interrupt_exit_code"]

# Ray turns 127.0.0.1 into the machine's interface address; any other loopback address is
# kept as given, so the embedded default really stays on loopback (see SECURITY.md).
LOCAL_NODE_IP = os.environ.get("RAYMETA_NODE_IP", "127.0.0.2")
# the GCS address of the local instance connect() started in this process
_own_gcs: str | None = None
# a SIGTERM reached this process after connect() (interrupt_exit_code)
_sigterm_seen = False
# what to try when the local instance does not come up (docs/clusters.md)
START_HINT = ("try --address HOST:PORT of a running Ray cluster, fewer CPUs "
              "(RAY_OVERRIDE_RESOURCES='{\"CPU\": 2}'), or `ray stop` to clear a stale Ray "
              "instance of yours on this machine")
# the notice Ray logs whenever it starts an instance with token authentication, its default: it
# tells the user how to turn authentication off (SECURITY.md keeps it on)
_TOKEN_NOTICE = ("ray._private.authentication.authentication_token_setup",
                 "Token authentication is enabled for this Ray cluster.")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread of a process whose Ray :func:`connect` started or joined,
    as Ctrl-C raises :class:`KeyboardInterrupt`: the run ends as an interrupted one (its actors
    released, Ray stopped, one line from the CLI). Its ``exit_code`` is the shell's for SIGTERM.
    Raised while ``ray.get`` waits, it reaches the caller as a plain ``KeyboardInterrupt``
    (:func:`interrupt_exit_code` still tells)."""

    exit_code = 128 + signal.SIGTERM


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a local instance on loopback.

    Returns True when this call started Ray (so the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    _quiet_ray()
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
        try:
            ray.init(address="local", _node_ip_address=LOCAL_NODE_IP, dashboard_host="127.0.0.1",
                     num_cpus=num_cpus, include_dashboard=False, **kwargs)
        except Exception as e:  # a node that does not come up is a bare Exception in Ray 2.60
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RaymetaError(f"cannot start a local Ray instance ({first}); {START_HINT}") from e
        global _own_gcs
        _own_gcs = ray.get_runtime_context().gcs_address
    _raise_on_sigterm()
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


def _quiet_ray() -> None:
    """Before ``ray.init``: no notice that tells the user to turn token authentication off (only
    that one record of Ray's logger: the authentication itself stays on), and no colour codes in
    the worker-log prefixes (``(TaskActor pid=...)``) unless both stdout and stderr are terminals
    (``$RAY_COLOR_PREFIX`` set by the user wins; ``$NO_COLOR`` is honoured)."""
    logger = logging.getLogger(_TOKEN_NOTICE[0])
    if _drop_token_notice not in logger.filters:
        logger.addFilter(_drop_token_notice)
    if os.environ.get("NO_COLOR") or not all(_isatty(f) for f in (sys.stdout, sys.stderr)):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read by Ray's log printer, line by line


def _drop_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_TOKEN_NOTICE[1])


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # None, a closed file
        return False


def _raise_on_sigterm() -> None:
    """After ``ray.init``, in the driver's main thread: SIGTERM raises :class:`Terminated`. There,
    ``ray.init`` has left its core worker's failure-signal handler, which prints ``*** SIGTERM
    received`` and a C++ stack on stderr before it hands over to Ray's Python handler
    (``sys.exit(15)``); a Python handler set after it replaces both. Other threads cannot set
    handlers, and Ray's worker processes never get here (they do not :func:`connect`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: Any) -> None:
    global _sigterm_seen
    _sigterm_seen = True
    raise Terminated()


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """The exit status of a process that ``e`` ends: 128 + SIGTERM after a SIGTERM, 130 (Ctrl-C)
    else. Ray's ``ray.get`` turns an exception a signal handler raised while it waits into a plain
    ``KeyboardInterrupt``, so the signal is remembered here, not only in :class:`Terminated`."""
    return Terminated.exit_code if isinstance(e, Terminated) or _sigterm_seen else 130


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
