"""``make wheelhouse``: every wheel raymeta needs beyond a stock CUDA PyTorch image, for an
air-gapped node.

    python benchmarks/wheelhouse.py --dest wheelhouse --python-version 312 --platform
    manylinux_2_28_x86_64 manylinux2014_x86_64

Run on a connected machine (any OS: nothing is installed here). Three pip calls:

1. ``pip wheel --no-deps``: raymeta itself as a wheel (so the node needs no build backend), built
   from a clean copy of the package and checked to hold exactly its files, the shipped configs and
   ready-made tasks included (:func:`build_wheel`); and any dependency published as a source archive
   only (seqeval);
2. ``pip install --dry-run --report``: resolve ``raymeta[extras]`` for the target Python and
   platforms (binary wheels only), without downloading the wheels themselves;
3. ``pip download --no-deps``: exactly the resolved versions, less what the image already has
   (torch and the CUDA runtime it ships: ``--exclude``), which would be gigabytes.

On the node: ``pip install --no-index --find-links wheelhouse 'raymeta[offline,test]'`` (``make
install-offline``): pip keeps the image's torch, which satisfies ``torch>=2.3``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a CUDA PyTorch image (pytorch/pytorch, NGC) already has: torch and the CUDA libraries it
# pulls in.
DEFAULT_EXCLUDE = ["torch", "triton", "nvidia-*", "cuda-*", "pytorch-triton*"]


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ pip " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def package_files(root: Path = REPO) -> set[str]:
    """What the raymeta wheel must hold: every file of the package (modules, ``configs/**/*.yaml``,
    ``tasks/catalog/*.yaml``), as wheel paths, byte code left out."""
    pkg = root / "raymeta"
    return {p.relative_to(root).as_posix() for p in pkg.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def check_wheel(wheel: Path, root: Path = REPO) -> None:
    """The wheel holds the package's files, no more and no fewer (a one-line error otherwise): a
    file missing from pyproject.toml's package-data, or a stale module from an old ``build/lib``,
    would otherwise ship."""
    with zipfile.ZipFile(wheel) as z:
        held = {n for n in z.namelist() if n.startswith("raymeta/") and not n.endswith("/")}
    want = package_files(root)
    missing, extra = sorted(want - held), sorted(held - want)
    if missing or extra:
        raise SystemExit(f"wheelhouse: error: {wheel.name} lacks {missing[:5] or 'nothing'} and "
                         f"has {extra[:5] or 'nothing'} "
                         "beyond raymeta/ (see pyproject.toml [tool.setuptools.package-data])")


def build_wheel(dest: Path, *, isolation: bool = True, root: Path = REPO) -> Path:
    """``pip wheel --no-deps`` of raymeta into ``dest``, from a copy of the project's top-level
    files and package (setuptools reuses an in-tree ``build/lib``, so a module deleted since the
    last build would ship), checked by
    :func:`check_wheel`. ``isolation=False``: the running Python's setuptools (no network
    needed)."""
    with tempfile.TemporaryDirectory(prefix="raymeta-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in root.iterdir():
            if f.is_file():
                shutil.copy2(f, src / f.name)
        shutil.copytree(root / "raymeta", src / "raymeta",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("raymeta-*.whl"))
        _pip("wheel", "--no-deps", "--quiet", *([] if isolation else ["--no-build-isolation"]),
             "--wheel-dir", str(dest), str(src))
    built = [f for f in dest.glob("raymeta-*.whl") if f not in before] or list(before)
    wheel = max(built, key=lambda f: f.stat().st_mtime)
    check_wheel(wheel, root)
    return wheel


def _target(args: argparse.Namespace) -> list[str]:
    out = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp"]
    for p in args.platform:
        out += ["--platform", p]
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _resolve(args: argparse.Namespace, dest: Path, wheel: Path, report: Path,
             tmp: str) -> str | None:
    """Resolve raymeta[extras] for the target into ``report``; None, or the requirement that has no
    wheel."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(report),
           "--target", str(Path(tmp) / "t"), "--find-links", str(dest), *_target(args),
           f"raymeta[{args.extras}] @ {wheel.as_uri()}"]
    print("+ pip install --dry-run --report ... " + " ".join(_target(args)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    found = re.search(r"No matching distribution found for (\S+)", proc.stderr)
    if found is None:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"wheelhouse: error: pip could not resolve raymeta[{args.extras}] (above)")
    return found.group(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default=str(REPO / "wheelhouse"))
    p.add_argument("--python-version", default="312",
                   help="target Python, as pip spells it (312 = 3.12)")
    p.add_argument("--platform", nargs="+", default=["manylinux_2_28_x86_64",
                                                     "manylinux2014_x86_64"],
                   help="target platform tags (numpy and pyarrow publish manylinux_2_28 wheels "
                   "only)")
    p.add_argument("--extras", default="offline,test", help="raymeta extras to include")
    p.add_argument("--exclude", nargs="*", default=DEFAULT_EXCLUDE,
                   help="names (globs) the image already has")
    args = p.parse_args(argv)
    dest = Path(args.dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)

    wheel = build_wheel(dest)
    built: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="raymeta-wheelhouse-") as tmp:
        report = Path(tmp) / "report.json"
        # a dependency published as a source archive only gets a wheel built here, then resolve
        # again
        for _ in range(10):
            missing = _resolve(args, dest, wheel, report, tmp)
            if missing is None:
                break
            if missing in built:
                raise SystemExit(f"wheelhouse: error: {missing}: no wheel for Python "
                                 f"{args.python_version} on "
                                 f"{' '.join(args.platform)}, and the one built here does not fit "
                                 "it")
            built.add(missing)
            _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(dest), missing)
        resolved = json.loads(report.read_text())["install"]
    # raymeta and the wheels built here
    have = {_norm(f.name.split("-")[0]) for f in dest.glob("*.whl")}
    pins, skipped = [], []
    for item in resolved:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if _norm(name) in have:
            continue
        if any(fnmatch.fnmatch(name.lower().replace("_", "-"), pat) for pat in args.exclude):
            skipped.append(f"{name}=={version}")
        else:
            pins.append(f"{name}=={version}")
    (dest / "requirements.txt").write_text("# resolved by benchmarks/wheelhouse.py; the image "
                                           "provides: "
                                           + " ".join(sorted(skipped)) + "\n"
                                           + "\n".join(sorted(pins)) + "\n")
    _pip("download", "--no-deps", "--quiet", "--dest", str(dest), *_target(args), *pins)
    size = sum(f.stat().st_size for f in dest.glob("*.whl")) / 2**20
    left = ", ".join(sorted(skipped)) or "none"
    print(f"wheelhouse: {len(pins) + 1} wheels, {size:.0f} MB in {dest} "
          f"(left to the image: {left})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
