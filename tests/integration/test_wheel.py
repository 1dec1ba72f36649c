"""The wheel is the product: built as ``make wheelhouse`` builds it (benchmarks/wheelhouse.py),
unpacked, and run with nothing of the checkout importable: the ready-made tasks, a task preview and
a short meta-training from a config chosen by name (``--config tiny``), all read from the package
data the wheel carries.

The commands run in the unpacked wheel's directory, outside the repository, with PYTHONPATH naming
it only. The 2-step run joins this test process's Ray instance (``--address``, seconds instead of a
new instance), and its task actors import raymeta from the wheel too: Ray puts a joining driver's
working directory first on its workers' ``sys.path``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ..conftest import REPO

PACKAGE = REPO / "raymeta"
CATALOG = sorted(p.name for p in (PACKAGE / "tasks" / "catalog").glob("*.yaml"))
CONFIGS = sorted(p.relative_to(PACKAGE / "configs").as_posix()
                 for p in (PACKAGE / "configs").rglob("*.yaml"))


def _wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse",
                                                  REPO / "benchmarks" / "wheelhouse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    start = time.perf_counter()
    # no build isolation: the venv's setuptools, no network (wheelhouse.py itself builds isolated)
    built = _wheelhouse().build_wheel(tmp_path_factory.mktemp("dist"), isolation=False)
    print(f"\nwheel {built.name} built in {time.perf_counter() - start:.1f} s")
    return built


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(d)
    assert not d.resolve().is_relative_to(REPO.resolve())
    return d


def run(site: Path, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, *argv], cwd=site, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_the_wheel_holds_every_catalog_task_and_shipped_config(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {f"raymeta/tasks/catalog/{n}" for n in CATALOG} <= names
    assert {f"raymeta/configs/{n}" for n in CONFIGS} <= names
    assert {"starter.yaml", "tiny.yaml",
            "recipes/huffpost.yaml"} <= set(CONFIGS) and len(CATALOG) >= 20
    assert not any("__pycache__" in n for n in names)
    # the deliverable's commands (raymeta fit / predict) and the whole package's modules
    modules = {str(p.relative_to(REPO)) for p in (REPO / "raymeta").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {"raymeta/classify/fitting.py", "raymeta/cli_classify.py"} <= modules <= names


# `python -m raymeta.cli tasks list`, then `tasks show smlmt_starter`, in one process (one start-up
# with torch and transformers, seconds on 2 CPUs), which first says where raymeta came from.
LIST_AND_SHOW = """
import runpy, sys, raymeta
print("FROM", raymeta.__file__, flush=True)
sys.argv = ["raymeta", "tasks", "list"]
try:
    runpy.run_module("raymeta.cli", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("=== SHOW", flush=True)
from raymeta.cli import main
sys.exit(main(["tasks", "show", "smlmt_starter"]))
"""


def test_tasks_list_and_show_from_the_wheel(site):
    r = run(site, "-c", LIST_AND_SHOW)
    origin = Path(r.stdout.split("FROM ", 1)[1].split()[0]).resolve()
    assert origin.is_relative_to(site.resolve()), origin
    listed, show = r.stdout.split("=== SHOW", 1)
    missing = [n for n in CATALOG if Path(n).stem not in listed]
    assert not missing, f"tasks list lacks {missing}:\n{listed}"
    assert ("smlmt_starter" in show and "sequence_classification" in show
            and "episode seed=0" in show), show


@pytest.mark.slow  # end to end; the slow tier CI runs (docs/testing.md)
def test_train_a_shipped_config_by_name_from_the_wheel(site, ray_local, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "run"
    r = run(site, "-m", "raymeta.cli", "train", "--config", "tiny", "--address", address,
            "meta.steps=2",
            f"output_dir={out}", f"cache_dir={tmp_path / 'cache'}", "checkpoint.every_steps=1000",
            "resources.torch_threads=1")
    assert (out / "final").is_dir() and str(out / "final") in r.stdout, r.stdout[-2000:]
    assert "name: tiny" in (out / "config.yaml").read_text()
