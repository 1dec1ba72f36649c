"""The code's style, held by the suite: ``ruff check`` with the project's own settings
(pyproject.toml: lines of at most 100 columns, pyflakes, bugbear, import order), the same as
``make lint``. Skipped where ruff is not installed (it comes with the ``test`` extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_ruff_check_passes():
    pytest.importorskip("ruff")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "raymeta", "tests",
                        "jobs", "benchmarks"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_sees_a_long_line(tmp_path):
    pytest.importorskip("ruff")
    bad = tmp_path / "bad.py"
    bad.write_text("x = " + repr("y" * 100) + "\n")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                        str(REPO / "pyproject.toml"), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "E501" in r.stdout
