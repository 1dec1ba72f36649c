"""Memory of a training run over time: the whole process tree's PSS and each task actor's private
heap (PSS of its anonymous memory), sampled once a second while ``raymeta train`` runs.

    python benchmarks/actor_memory.py --label after --out /tmp/mem/after.json \\
        -- --config starter output_dir=/tmp/mem/run-after --overwrite
    python benchmarks/actor_memory.py --label before --pythonpath <checkout of the old commit> ...
    python benchmarks/actor_memory.py --plot /tmp/mem/before.json /tmp/mem/after.json \\
        --figure benchmarks/figures/actor_memory.png

PSS (proportional set size) charges a shared page to each process that maps it in proportion, so
the tree's PSS adds up to what the run costs the machine; RSS would count torch's shared libraries
and the object store's shared memory once per process. An actor's private heap is its ``Pss_Anon``
(``/proc/<pid>/smaps_rollup``): what neither page cache nor the shared object store explains.
``--pythonpath`` runs another checkout of raymeta (Ray's workers inherit the environment), so that
before and after run side by side on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

GB = 2**30


def rollup(pid: int) -> dict[str, float]:
    """Pss and Pss_Anon of one process, in GB (empty when it is gone)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024 / GB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return {"pss": out.get("Pss", 0.0), "anon": out.get("Pss_Anon", 0.0)}


def sample(root: psutil.Process) -> dict[str, object]:
    """The tree's PSS and every task actor's (by Ray's process title ``ray::TaskActor...``)."""
    tree, actors = 0.0, {}
    for p in [root, *root.children(recursive=True)]:
        r = rollup(p.pid)
        if not r:
            continue
        tree += r["pss"]
        try:
            title = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title.startswith("ray::TaskActor"):
            actors[str(p.pid)] = r
    return {"tree_pss": tree, "actors": actors}


def steps_done(run_dir: Path) -> int:
    try:
        return sum(1 for _ in (run_dir / "metrics.jsonl").open())
    except FileNotFoundError:
        return 0


def measure(train_args: list[str], pythonpath: str | None, every_s: float) -> dict[str, object]:
    out_dir = next((a.split("=", 1)[1] for a in train_args if a.startswith("output_dir=")), None)
    if out_dir is None:
        sys.exit("give the run an output_dir=... after --")
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", "import sys; from raymeta.cli import main; sys.exit(main())",
           "train", *train_args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=pythonpath or None,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root, samples = psutil.Process(proc.pid), []
    stop = threading.Event()
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None and not stop.is_set():
        s = sample(root)
        s.update(t=time.monotonic() - t0, step=steps_done(Path(out_dir)))
        samples.append(s)
        time.sleep(every_s)
    proc.wait()
    reader.join(timeout=5)
    if proc.returncode:
        sys.exit(f"train exited {proc.returncode}: {''.join(err[-5:])}")
    # which task each actor process holds, from the run's log ("task 'x' (type): actor pid N")
    pids = dict(re.findall(r"task '([^']+)' \([a-z_]+\): actor pid (\d+)", "".join(err)))
    return {"command": " ".join(["raymeta", "train", *train_args]),
            "wall_s": time.monotonic() - t0, "samples": samples,
            "actor_pids": {pid: task for task, pid in pids.items()}}


def summary(res: dict[str, object]) -> dict[str, float]:
    """Peak tree PSS; each actor's private heap at its first step and at its peak (the largest
    actor's)."""
    samples = res["samples"]
    first = [s for s in samples if s["step"] >= 1 and s["actors"]]
    peak_anon = max((a["anon"] for s in samples for a in s["actors"].values()), default=0.0)
    at_first = max((a["anon"] for a in first[0]["actors"].values()), default=0.0) if first else 0
    return {"tree_pss_peak_gb": max(s["tree_pss"] for s in samples),
            "actor_anon_step1_gb": at_first, "actor_anon_peak_gb": peak_anon,
            "actors": max(len(s["actors"]) for s in samples), "wall_s": res["wall_s"]}


def plot(paths: list[str], figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for path in paths:
        res = json.loads(Path(path).read_text())
        xs = [s["t"] for s in res["samples"]]
        ax1.plot(xs, [s["tree_pss"] for s in res["samples"]], label=res["label"])
        ax2.plot(xs, [max((a["anon"] for a in s["actors"].values()), default=float("nan"))
                      for s in res["samples"]], label=res["label"])
    ax1.axhline(4.0, color="grey", ls=":", lw=1)
    ax1.set(title="whole run: process tree PSS", xlabel="seconds", ylabel="GB")
    ax2.axhline(0.6, color="grey", ls=":", lw=1)
    ax2.set(title="largest task actor: private heap (Pss_Anon)", xlabel="seconds",
            ylabel="GB")
    for ax in (ax1, ax2):
        ax.legend()
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(figure, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="run")
    ap.add_argument("--out")
    ap.add_argument("--pythonpath", help="a checkout of raymeta to run instead of this one")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--plot", nargs="+", help="result files to plot instead of running")
    ap.add_argument("--figure", default="actor_memory.png")
    ap.add_argument("train_args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.figure)
        for p in args.plot:
            print(p, json.dumps(summary(json.loads(Path(p).read_text()))))
        return
    res = measure([a for a in args.train_args if a != "--"], args.pythonpath, args.every)
    res["label"] = args.label
    if args.out:
        Path(args.out).write_text(json.dumps(res))
    print(json.dumps({"label": args.label, **summary(res)}))


if __name__ == "__main__":
    main()
