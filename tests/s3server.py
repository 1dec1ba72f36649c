"""A real S3-protocol server on loopback for the storage tests: ``moto[server]``'s standalone
server, as Ray's own storage tests use (not a mock of boto or pyarrow: raymeta talks S3 over HTTP to
it).

The endpoint and credentials reach raymeta the way a user's do, through ``AWS_ENDPOINT_URL`` and
friends. They are set when this module is imported (tests/conftest.py imports it before any Ray
instance starts), so that Ray workers, which inherit the environment of the process that started
Ray, read the same bucket as the driver. The server itself starts only when a test asks for it
(:func:`s3_server`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# a recognisable secret: tests check it appears in no output
SECRET = "raymeta-test-secret-d41d8cd98f00"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT = free_port()
ENV = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{PORT}", "AWS_ACCESS_KEY_ID": "raymeta-test-key",
       "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}


MARK = "RAYMETA_TEST_S3_ENDPOINT"  # says AWS_ENDPOINT_URL is a test process's own, not the user's


def export_env() -> None:
    """This process's endpoint and test credentials, unless the user's environment names an endpoint
    of its own (then the storage tests skip: they never write to a real bucket). A pytest-xdist
    worker inherits its controller's test endpoint and replaces it with its own (each worker runs
    its own server)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint is not None and endpoint != os.environ.get(MARK):
        return
    os.environ.update(ENV)
    os.environ[MARK] = ENV["AWS_ENDPOINT_URL"]


@contextlib.contextmanager
def moto_server(port: int, log: Path, *, auth: bool = False):
    """``moto_server`` on 127.0.0.1:``port`` until the block ends. ``auth``: IAM checks on (every
    key is refused)."""
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        end = time.time() + 60
        while True:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.time() > end:
                raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_bucket(name: str) -> str:
    """Create ``name`` on the server of ``AWS_ENDPOINT_URL``; returns ``s3://name``."""
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"],
                      allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"
