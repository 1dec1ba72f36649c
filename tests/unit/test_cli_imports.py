"""A CLI that answers in a second (issue 40): ``raymeta --help``, ``--version``, usage errors and
config errors import no torch, transformers, datasets or Ray (seconds of start-up on 2 CPUs).

Each command line runs in a fresh ``python -X importtime -m raymeta.cli`` (not the tests' fork
server, which has imported everything already); the interpreter's own log of every module the
process imported is on stderr, one ``import time:`` line each. A timed test would be flaky on a
loaded machine; the import list is not. The timings: benchmarks/results/cli-startup.md."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "ray")
TYPO = "raymeta: error: config key 'meta.stepz': unknown key"


def imported(log: str) -> set[str]:
    """The top-level packages named in ``-X importtime`` output (``import time: SELF | CUMULATIVE |
    NAME``, NAME indented by its nesting): ``torch.nn`` counts as ``torch``."""
    out = set()
    for line in log.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[0].strip().isdigit():
            out.add(fields[2].strip().split(".")[0])
    return out


def heavy(log: str) -> list[str]:
    return sorted(set(HEAVY) & imported(log))


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPROFILEIMPORTTIME",
                                                             "RAY_ADDRESS")}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "raymeta.cli", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def messages(stderr: str) -> list[str]:
    """What the command itself wrote to stderr: the lines that are not the import log."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("import time:")]


SAMPLE = """\
import time: self [us] | cumulative | imported package
import time:       812 |        812 |   _io
import time:      1811 |       1811 | raymeta.arglists
import time:     38872 |    2518413 |       torch
import time:       210 |        210 |         torch.nn.modules
import time:       605 |     972226 |   datasets.arrow_dataset
"""


def test_the_import_log_parser_finds_heavy_packages():
    """The check below can fail: a log that names torch (nested, indented) or a submodule of
    datasets is caught, and the header line is no package."""
    assert imported(SAMPLE) == {"_io", "raymeta", "torch", "datasets"}
    assert heavy(SAMPLE) == ["datasets", "torch"]
    assert heavy(SAMPLE.replace("torch", "torchish").replace("datasets", "mydatasets")) == []


def test_the_import_log_parser_reads_this_pythons_log(tmp_path):
    """The format is this interpreter's: a package the process imports is found (were it not, every
    check below would pass with nothing read)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", "import json.decoder"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "json" in imported(p.stderr), p.stderr[-2000:]


@pytest.fixture
def typo_yaml(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\nmeta:\n  stepz: 3\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("args, code, expect", [
    (("--help",), 0, None),
    (("--version",), 0, None),
    (("train", "--help"), 0, None),
    (("config", "show", "--config", "tiny"), 0, None),
    (("train",), 2, "the following arguments are required: --config"),
    (("train", "--config", "tiny", "--no-such-flag"), 2, "unrecognized arguments: --no-such-flag"),
    (("train", "--config", "{typo}"), 2, TYPO),
    (("train", "--config", "tiny", "meta.stepz=3"), 2, TYPO),
    (("train", "--config", "tiny", "--dry-run", "meta.stepz=3"), 2, TYPO),
    (("config", "show", "--config", "{typo}"), 2, TYPO),
    (("config", "show", "meta.stepz=3"), 2, TYPO),
], ids=["help", "version", "train-help", "config-show", "usage-missing", "usage-unknown-flag",
        "yaml-typo", "override-typo", "dry-run-typo", "show-yaml-typo", "show-override-typo"])
def test_answers_without_torch_transformers_datasets_or_ray(args, code, expect, typo_yaml,
                                                           tmp_path):
    r = run(*(a.format(typo=typo_yaml) for a in args), cwd=tmp_path)
    said = messages(r.stderr)
    assert r.returncode == code, said
    found = imported(r.stderr)
    assert {"raymeta", "argparse"} <= found  # the log was read
    assert heavy(r.stderr) == [], f"{' '.join(args)} imported {heavy(r.stderr)}"
    if code == 0:
        assert said == [] and r.stdout
    elif expect == TYPO:  # a config error: one line naming the key
        assert said == [TYPO]
    else:  # argparse's usage, then its one-line error
        assert said[-1].endswith(expect) and "Traceback" not in r.stderr
