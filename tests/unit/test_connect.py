"""What :func:`raymeta.cluster.connect` does around ``ray.init``: a local start that fails is one
line with what to try; Ray's notice telling the user to turn token authentication off is dropped
(that record only); the worker-log prefixes lose their colour codes off a terminal; SIGTERM raises
:class:`~raymeta.cluster.connect.Terminated` in the driver. The end-to-end view of the same is
tests/integration/test_ray_output.py and test_interrupt.py."""

from __future__ import annotations

import importlib
import logging
import signal

import pytest

from raymeta.cluster.connect import START_HINT, Terminated, connect
from raymeta.errors import RaymetaError

# the module (raymeta.cluster's `connect` is the function)
connect_mod = importlib.import_module("raymeta.cluster.connect")

# Ray 2.60's own words when the raylet of a new local instance does not register in time
# (ray/_private/node.py); a real start-up timeout cannot be provoked reliably on 2 CPUs, so ray.init
# is made to raise what Ray raises then.
TIMED_OUT = ("The current node timed out during startup. This could happen because some of the "
             "raylet failed to startup or the GCS has become overloaded.")


@pytest.fixture
def no_ray(monkeypatch):
    """``connect`` as in a process without Ray yet; ``ray.init`` is the test's to replace."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    return ray


def test_a_local_start_that_times_out_is_one_line_with_what_to_try(no_ray, monkeypatch):
    def init(**kwargs):
        assert kwargs["address"] == "local"
        raise Exception(TIMED_OUT)  # what Ray raises: a bare Exception

    monkeypatch.setattr(no_ray, "init", init)
    with pytest.raises(RaymetaError) as err:
        connect()
    msg = str(err.value)
    assert msg == f"cannot start a local Ray instance ({TIMED_OUT}); {START_HINT}"
    assert "\n" not in msg
    assert "--address" in msg and "ray stop" in msg and "CPU" in msg


def test_only_the_first_line_of_rays_message_is_kept(no_ray, monkeypatch):
    def init(**kwargs):
        raise RuntimeError("Failed to start GCS.\n  last 20 lines of its log:\n...")

    monkeypatch.setattr(no_ray, "init", init)
    with pytest.raises(RaymetaError, match=r"^cannot start a local Ray instance \(Failed to start "
                                           r"GCS\.\); try --address"):
        connect()


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_ctrl_c_and_exit_during_the_start_are_left_as_they_are(no_ray, monkeypatch, interrupt):
    def init(**kwargs):
        raise interrupt()

    monkeypatch.setattr(no_ray, "init", init)
    with pytest.raises(interrupt):
        connect()


def test_rays_notice_to_turn_token_authentication_off_is_dropped(no_ray, monkeypatch):
    """Ray's own functions log it; the filter lets the logger's other records through."""
    from ray._private.authentication import authentication_token_setup as setup

    monkeypatch.setattr(no_ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(no_ray, "get_runtime_context",
                        lambda: type("Ctx", (), {"gcs_address": "127.0.0.2:1"})())
    monkeypatch.setattr(connect_mod, "_raise_on_sigterm", lambda: None)
    monkeypatch.setattr(connect_mod, "_own_gcs", None)
    logger = logging.getLogger(setup.__name__)
    assert logger.name == connect_mod._TOKEN_NOTICE[0]
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        connect()
        setup._warn_token_auth_enabled()  # what ray.init() calls for a new local instance
        setup._warn_token_auth_disabled()  # a warning in the right direction stays
    finally:
        logger.removeHandler(handler)
    assert len(seen) == 1 and seen[0].startswith("Token authentication is disabled"), seen


def test_no_colour_prefixes_off_a_terminal_and_the_users_choice_wins(no_ray, monkeypatch):
    import os

    monkeypatch.setattr(connect_mod, "_isatty", lambda stream: False)
    connect_mod._quiet_ray()
    assert os.environ["RAY_COLOR_PREFIX"] == "0"
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")
    connect_mod._quiet_ray()
    assert os.environ["RAY_COLOR_PREFIX"] == "1"
    monkeypatch.delenv("RAY_COLOR_PREFIX")
    monkeypatch.setattr(connect_mod, "_isatty", lambda stream: True)
    monkeypatch.delenv("NO_COLOR", raising=False)
    connect_mod._quiet_ray()
    assert "RAY_COLOR_PREFIX" not in os.environ  # on a terminal Ray colours them as it likes


def test_sigterm_raises_terminated_with_the_shells_exit_code(monkeypatch):
    monkeypatch.setattr(connect_mod, "_sigterm_seen", False)
    assert connect_mod.interrupt_exit_code(KeyboardInterrupt()) == 130  # Ctrl-C
    before = signal.getsignal(signal.SIGTERM)
    try:
        connect_mod._raise_on_sigterm()
        with pytest.raises(Terminated) as err:
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert isinstance(err.value, KeyboardInterrupt) and err.value.exit_code == 143
    assert connect_mod.interrupt_exit_code(err.value) == 143
    # what ray.get makes of it when the signal comes while it waits: a plain KeyboardInterrupt
    assert connect_mod.interrupt_exit_code(KeyboardInterrupt()) == 143
