"""``raymeta evaluate``'s refusals, each one line before anything is loaded or scored: an existing
``--output`` file (without ``--overwrite``), an ``--init`` that names nothing, an init given
twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..cli_forks import CliForks

PLAIN = "offline:all-MiniLM-L6-v2"


@pytest.fixture
def raymeta(cli: CliForks, tmp_path: Path):
    """``raymeta(*args)`` run in ``tmp_path``, which holds a run folder (``runs/my_run``): the
    one-line error, after checking there is exactly one line and no traceback."""
    (tmp_path / "runs" / "my_run" / "final").mkdir(parents=True)

    def run(*args: str) -> str:
        started = time.monotonic()
        r = cli.run(["evaluate", *args, "--task", "bbc_news"], cwd=tmp_path, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert time.monotonic() - started < 60  # no model load, no Ray, no hub retries
        return lines[0].removeprefix("raymeta: error: ")

    return run


def test_an_existing_output_is_refused_without_overwrite(raymeta, tmp_path):
    (tmp_path / "results.json").write_text("{}")  # the default --output
    assert raymeta("--init", PLAIN) == ("--output results.json: the file exists (--overwrite "
                                        "replaces it)")
    (tmp_path / "mine.json").write_text('{"keep": 1}')
    assert raymeta("--init", PLAIN, "--output", "mine.json") == ("--output mine.json: the file "
                                                                 "exists (--overwrite replaces it)")
    assert (tmp_path / "mine.json").read_text() == '{"keep": 1}'
    # with --overwrite, the command goes on, to the next check
    assert raymeta("--init", "runs/typo", "--output", "mine.json", "--overwrite") == (
        "--init runs/typo: no such directory (runs/ holds: my_run/)")


def test_an_init_that_names_nothing_is_one_line_before_anything_loads(raymeta):
    assert raymeta("--init", "runs/typo") == ("--init runs/typo: no such directory (runs/ holds: "
                                              "my_run/)")
    # the second of two: refused before the first is loaded
    assert raymeta("--init", PLAIN, "--init", "runs/my_rn") == ("--init runs/my_rn: no such "
                                                                "directory (runs/ holds: my_run/)")
    # the tests run with HF_HUB_OFFLINE=1 (tests/conftest.py)
    assert raymeta("--init", "bert-base-uncasedx") == (
        "--init bert-base-uncasedx: no such directory (nor a model in the Hugging Face cache, and "
        "HF_HUB_OFFLINE is set)")


def test_an_init_given_twice_is_refused(raymeta):
    assert raymeta("--init", PLAIN, "--init", PLAIN) == f"--init {PLAIN}: given twice"
