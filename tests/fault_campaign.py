"""A seeded fault campaign: one tiny meta-training run takes a planned series of real faults and
must end bit-equal to an uninterrupted run of the same configuration.

The plan is drawn from a seed (:func:`plan`) and printed first. For each ``meta.reduce`` (driver,
collective):

- ``step``: a task actor's process SIGKILLed once the driver has finished step n (its next call
  fails);
- ``restart``: a task actor SIGKILLed while the task actors restart after the fault before it (its
  checkpoint restore fails: one more restart);
- ``checkpoint``: a task actor SIGKILLed while the driver collects the state of the checkpoint at
  step n;
- ``validate``: a task actor SIGKILLed as the validation at step n starts (both actors score a
  validation task);
- ``driver``: the driver itself SIGKILLed in the middle of writing the checkpoint at step n (before
  its k-th ``os.fsync`` / ``os.replace`` under ``checkpoints/``, k of the K that the uninterrupted
  run's save made), then ``raymeta train --resume``; never the first checkpoint's write (nothing to
  resume from yet).

Faults fire in the plan's order, each once: a fault waits for the one before it, so a replay after a
recovery never fires a fault twice. The driver runs as a subprocess (``python -m
tests.fault_campaign drive``) that installs the plan's kills around
:class:`~raymeta.train.trainer.MetaTrainer` and then runs ``raymeta.cli.main(["train", ...])``, on a
``ray start`` head that outlives it (a killed driver that owned a local Ray instance would take it
down); ``--resume`` after the driver's kill. The run's ``final`` model, its ``best`` model, and
every loss, gradient norm and validation score in ``metrics.jsonl`` must equal the uninterrupted
run's, bit for bit, with each step and each validation logged once.

Replay a seed (what a failure prints)::

    .venv/bin/python -m tests.fault_campaign run --seed 1234 --reduce collective
    RAYMETA_FAULT_SEED=1234 .venv/bin/pytest -m slow tests/integration/test_fault_campaign.py -k
    collective

``run`` starts its own ``ray start`` head, works in ``--workdir`` (default: a new temporary
directory, kept) and writes ``summary.json`` there; exit status 1 when the campaign fails.
``--reference DIR``: reuse an earlier campaign's uninterrupted run of the same reduce mode (its
``campaign/reference/run``), to try many seeds faster. ``--plan-only``: print the plan.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = 60  # meta-steps of the campaign's run
EVERY = 5  # checkpoint.every_steps
VAL_EVERY = 10  # eval.validation.every_steps
TASKS = ("cls", "ner")
ACTOR_KINDS = ("step", "checkpoint", "validate")
# resume_start: a task actor SIGKILLed while the actors start for the --resume after the driver's
# kill, before the resume point is restored (recovered like a lost actor in a step:
# MetaTrainer._running)
KINDS = ("step", "restart", "checkpoint", "validate", "driver", "resume_start")
DRIVE_TIMEOUT_S = 480  # one driver process; a hang fails the campaign instead of waiting forever


def replay_commands(seed: int, reduce: str) -> str:
    return (f"replay: .venv/bin/python -m tests.fault_campaign run --seed {seed} --reduce "
            f"{reduce}\n    or: RAYMETA_FAULT_SEED={seed} .venv/bin/pytest -m slow "
            f"tests/integration/test_fault_campaign.py -k {reduce}")


# -- the plan
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    index: int
    kind: str  # one of KINDS
    # steps done when it fires (None: restart, which follows the fault before it)
    step: int | None = None
    task: str | None = None  # the task actor killed (None: driver)
    # driver: where in the checkpoint write, as a fraction of its fsync/replace calls
    u: float | None = None
    # driver: the call (1-based) it dies before, resolved from the uninterrupted run
    point: int | None = None
    points: int | None = None  # driver: of how many calls that save made in the uninterrupted run

    def describe(self) -> str:
        if self.kind == "step":
            return f"#{self.index} actor '{self.task}' SIGKILLed after step {self.step}"
        if self.kind == "restart":
            return f"#{self.index} actor '{self.task}' SIGKILLed while the actors restart"
        if self.kind == "checkpoint":
            return (f"#{self.index} actor '{self.task}' SIGKILLed during the checkpoint at step "
                    f"{self.step}")
        if self.kind == "validate":
            return (f"#{self.index} actor '{self.task}' SIGKILLed during the validation at step "
                    f"{self.step}")
        if self.kind == "resume_start":
            return (f"#{self.index} actor '{self.task}' SIGKILLed while the actors start for the "
                    "--resume (before its restore)")
        where = (f"call {self.point} of {self.points}" if self.point
                 else f"at {self.u:.2f} of its fsync/replace calls")
        return (f"#{self.index} driver SIGKILLed writing the checkpoint at step {self.step} "
                f"({where}), then --resume")


def _allowed(kind: str, s: int, steps: int, every: int, val_every: int) -> bool:
    if kind == "step":
        return True
    if kind == "validate":
        return s % val_every == 0 or s == steps
    if kind == "driver" and s < 2 * every:
        # Not the first checkpoint's write: a driver killed before any checkpoint is complete has
        # nothing to
        # --resume from, and `raymeta train --resume` refuses (rightly), pointing at a plain
        # `raymeta train`, which refuses too (the directory holds a run): that case is
        # `--overwrite`, not a resume.
        return False
    return s % every == 0 or s == steps  # checkpoint, driver


def plan(seed: int, reduce: str, steps: int = STEPS, every: int = EVERY, val_every: int = VAL_EVERY,
         tasks: tuple[str, ...] = TASKS) -> list[Fault]:
    """Six faults drawn from ``random.Random`` of (seed, reduce): one of each actor kind and a
    fourth actor fault of a drawn kind, the driver's, in a drawn order, one per consecutive window
    of the steps (a drawn step of the window that the kind can fire at) so they spread over the run;
    and a ``restart`` right after a drawn actor fault that comes after a checkpoint (so that the
    restart restores one, and that restore is what the kill breaks). Then a ``resume_start`` fault
    right after the driver's (drawn last: the other faults stay)."""
    rng = random.Random(f"raymeta-fault-campaign:{seed}:{reduce}")
    kinds = [*ACTOR_KINDS, "driver", rng.choice(ACTOR_KINDS)]
    rng.shuffle(kinds)
    bounds = [1 + round(i * steps / len(kinds)) for i in range(len(kinds) + 1)]
    timed: list[Fault] = []
    for i, kind in enumerate(kinds):
        window = [s for s in range(bounds[i], bounds[i + 1]) if _allowed(kind, s, steps, every,
                                                                         val_every)]
        if not window:
            raise ValueError(f"no step in {bounds[i]}..{bounds[i + 1] - 1} for a {kind} fault: "
                             "fewer faults or more steps")
        f = Fault(0, kind, step=rng.choice(window))
        if kind == "driver":
            f.u = rng.random()
        else:
            f.task = rng.choice(tasks)
        timed.append(f)

    def checkpoint_before(f: Fault) -> bool:  # the run has completed a checkpoint when f fires
        return f.kind != "driver" and (f.step > every if f.kind == "step" else
                                       f.step >= every if f.kind == "validate"
                                       else f.step >= 2 * every)

    after = rng.choice([i for i, f in enumerate(timed) if checkpoint_before(f)])
    faults = timed[:after + 1] + [Fault(0, "restart", task=rng.choice(tasks))] + timed[after + 1:]
    at = next(i for i, f in enumerate(faults) if f.kind == "driver") + 1
    faults.insert(at, Fault(0, "resume_start", task=rng.choice(tasks)))
    for i, f in enumerate(faults):
        f.index = i
    return faults


def resolve_driver_points(faults: list[Fault], saves: dict[int, int]) -> None:
    """Each driver fault dies before call k of the K fsync/replace calls that the uninterrupted
    run's save at its step made: k = 1 + floor(u K)."""
    for f in faults:
        if f.kind == "driver":
            f.points = saves[f.step]
            f.point = 1 + math.floor(f.u * f.points)


# -- the run's configuration and data --------------------------------------------------------------


VALIDATION_TOPICS = {
    "topics_a": {"fruit": "apple banana cherry grape", "vehicle": "car truck bus train",
                 "weather": "rain snow wind storm", "music": "guitar piano drum violin"},
    "topics_b": {"animal": "dog cat horse sheep", "colour": "red green blue yellow",
                 "sport": "football tennis rugby golf", "tool": "hammer saw drill wrench"},
}


def write_data(d: Path) -> Path:
    """The two meta-training tasks' files (those of tests/integration/conftest.py's ``mixed_data``)
    and two validation tasks (its ``val_file``, and one more: each task actor scores one)."""
    d.mkdir(parents=True, exist_ok=True)
    topics = ["sport", "music", "travel", "food"]
    rows = ["text,label"] + [f"a sentence about {t} number {i},{t}" for i in range(12)
                             for t in topics]
    (d / "cls.csv").write_text("\n".join(rows) + "\n")
    words = [("Alice", "B-person"), ("met", "O"), ("Bob", "B-person"), ("in", "O"), ("New",
                                                                                     "B-location"),
             ("York", "I-location"), ("today", "O")]
    (d / "ner.conll").write_text("".join("".join(f"{w}\t{t}\n" for w,
                                                 t in words[: 3 + i % 5]) + "\n"
                                         for i in range(20)))
    for name, classes in VALIDATION_TOPICS.items():
        ws = {k: v.split() for k, v in classes.items()}
        (d / f"{name}.csv").write_text("text,label\n" + "".join(
            f"{' '.join(w[i % 4:] + w[:i % 4])} {w[i % 3]},{k}\n"
            for i in range(10) for k, w in ws.items()))
    return d


def campaign_config(run_dir: Path, data_dir: Path, cache_dir: Path, reduce: str, address: str,
                    steps: int = STEPS, every: int = EVERY, val_every: int = VAL_EVERY) -> dict:
    """tests/integration/conftest.py's tiny run: a tiny random BERT, fomaml with 1 inner step, 2
    tasks (classification, NER), a checkpoint every ``every`` steps, a validation every
    ``val_every``."""
    from tests.integration.conftest import tiny_config

    data = tiny_config(run_dir, data_dir, algorithm="fomaml", inner_steps=1, steps=steps,
                       reduce=reduce)
    data["tasks"] = data["tasks"][:2]
    data["cache_dir"] = str(cache_dir)
    data["checkpoint"] = {"every_steps": every, "keep_last": 2, "max_actor_restarts": 20}
    data["resources"]["address"] = address
    val = [{"name": name, "type": "sequence_classification", "max_length": 16,
            "source": {"kind": "files", "format": "csv",
                       "files": {"train": str(data_dir / f"{name}.csv")}}}
           for name in VALIDATION_TOPICS]
    data["eval"] = {"validation": {"tasks": val, "ways": 3, "shots": 2, "queries": 3,
                                   "episodes": 10,
                                   "every_steps": val_every}}
    return data


# -- the driver process: the plan's kills around MetaTrainer, then `raymeta train`
# --------------------


_FSYNC = os.fsync  # the real one (the driver process counts the calls of the wrapped one)


def _append(path: Path, record: dict) -> None:
    """One JSON line, on disk before anything else happens (the next thing may be this process's
    SIGKILL)."""
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        _FSYNC(fh.fileno())


def read_lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def install(faults: list[Fault], fired_log: Path, saves_log: Path, run: int,
            resume: bool = False) -> None:
    """Wrap MetaTrainer's methods so that the first of ``faults`` fires when its moment comes, then
    the next one. Every fired fault is appended to ``fired_log`` before its kill; every completed
    checkpoint's count of fsync/replace calls to ``saves_log``."""
    import ray

    from raymeta.train.trainer import MetaTrainer

    queue = list(faults)
    restarting = [False]
    # during MetaTrainer.checkpoint: the calls counted, the driver kill armed
    writing: dict[str, Any] = {}

    def due(kind: str, step: int | None = None) -> bool:
        return bool(queue) and queue[0].kind == kind and (step is None or queue[0].step == step)

    def fire(f: Fault, trainer_step: int, **detail) -> None:
        _append(fired_log, {**dataclasses.asdict(f), "run": run, "trainer_step": trainer_step,
                            "time": time.time(),
                            **detail})

    def kill_actor(trainer) -> None:
        f = queue.pop(0)
        pid = ray.get(trainer.actors[f.task].pid.remote())
        fire(f, trainer.step, pid=pid)
        os.kill(pid, signal.SIGKILL)
        end = time.time() + 10
        while not _gone(pid) and time.time() < end:  # dead before the next call goes out
            time.sleep(0.01)

    original_step = MetaTrainer.meta_step

    def meta_step(self):
        record = original_step(self)
        if due("step", self.step):
            kill_actor(self)
        return record

    original_checkpoint = MetaTrainer.checkpoint

    def checkpoint(self):
        if due("checkpoint", self.step):
            kill_actor(self)
        writing.clear()
        writing.update(calls=0, step=self.step, kill=queue[0] if due("driver", self.step) else None,
                       root=os.path.realpath(Path(self.out) / "checkpoints"))
        try:
            path = original_checkpoint(self)
        finally:
            counted, armed = writing.get("calls"), writing.get("kill")
            writing.clear()
        if armed is not None:  # the save made fewer calls than planned: die right after it
            fire(queue.pop(0), self.step, call="after the save returned", calls=counted)
            os.kill(os.getpid(), signal.SIGKILL)
        _append(saves_log, {"run": run, "step": self.step, "points": counted})
        return path

    def counting(name: str, original):
        """os.fsync / os.replace, counted when they touch <output_dir>/checkpoints during
        MetaTrainer.checkpoint (not the tracker's flush of its TensorBoard file there); the planned
        one is never made."""
        def call(*args, **kwargs):
            if writing:
                what = str(args[0])
                if name == "fsync" and isinstance(args[0], int):
                    with contextlib.suppress(OSError):
                        what = os.readlink(f"/proc/self/fd/{args[0]}")
                where = os.path.realpath(what)
                if where == writing["root"] or where.startswith(writing["root"] + os.sep):
                    writing["calls"] += 1
                    f = writing["kill"]
                    if f is not None and writing["calls"] == f.point:
                        queue.pop(0)
                        to = f", {args[1]}" if len(args) > 1 else ""
                        fire(f, writing["step"], call=f"before os.{name}({what}{to})")
                        os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return call

    os.fsync = counting("fsync", os.fsync)
    os.replace = counting("replace", os.replace)

    original_validate = MetaTrainer.validate

    def validate(self):
        if due("validate", self.step):
            kill_actor(self)
        return original_validate(self)

    original_restart = MetaTrainer.restart_actors

    def restart_actors(self):
        restarting[0] = True
        try:
            return original_restart(self)
        finally:
            restarting[0] = False

    original_start = MetaTrainer.start_actors

    def start_actors(self):
        original_start(self)
        if due("restart") if restarting[0] else resume and due("resume_start"):
            kill_actor(self)

    MetaTrainer.meta_step = meta_step
    MetaTrainer.checkpoint = checkpoint
    MetaTrainer.validate = validate
    MetaTrainer.restart_actors = restart_actors
    MetaTrainer.start_actors = start_actors


def drive(args: argparse.Namespace) -> int:
    fired_log, saves_log = Path(args.fired), Path(args.saves)
    faults = [Fault(**d) for d in json.loads(Path(args.plan).read_text())] if args.plan else []
    done = {r["index"] for r in read_lines(fired_log)}
    install([f for f in faults if f.index not in done], fired_log, saves_log, args.run, args.resume)
    from raymeta.cli import main

    return main(["train", "--config", args.config, *(["--resume"] if args.resume else [])])


# -- the campaign
# ------------------------------------------------------------------------------------


class CampaignFailed(AssertionError):
    pass


def _environment() -> dict[str, str]:
    """As from a user's shell (tests/cli_forks.py): no Ray settings of this process; offline; one
    torch thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    return env


def run_driver(work: Path, name: str, config: Path, *, plan_file: Path | None, resume: bool,
               run: int,
               timeout: float = DRIVE_TIMEOUT_S) -> dict:
    """One driver process; its exit status, seconds and stderr file."""
    out, err = work / f"{name}.out", work / f"{name}.err"
    argv = [sys.executable, "-m", "tests.fault_campaign", "drive", "--config", str(config), "--run",
            str(run),
            "--fired", str(work / "fired.jsonl"), "--saves", str(work / "saves.jsonl"),
            *(["--plan", str(plan_file)] if plan_file else []), *(["--resume"] if resume else [])]
    t0 = time.time()
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=o, stderr=e, env=_environment())
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CampaignFailed(f"{name}: no exit within {timeout:g} s (a hang); stderr {err}:\n"
                                 f"{err.read_text()[-3000:]}") from None
    return {"name": name, "returncode": code, "seconds": round(time.time() - t0, 1),
            "stderr": str(err),
            "resume": resume}


def final_tensors(out: Path, sub: str = "final") -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / sub / "model.safetensors"))


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Names whose tensors differ in any bit (dtype, shape or bytes)."""
    if a.keys() != b.keys():
        return sorted(a.keys() ^ b.keys())
    import torch

    def bits(t):
        return t.contiguous().reshape(-1).view(torch.uint8)

    return [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
            or not torch.equal(bits(a[k]), bits(b[k]))]


def metrics(out: Path) -> list[dict]:
    return read_lines(out / "metrics.jsonl")


def _numbers(recs: list[dict]) -> tuple[list, list]:
    """What must be bit-equal in metrics.jsonl: per training step its losses and gradient norm, per
    validation its scores (JSON floats are written with repr: equal text, equal bits)."""
    train = [(r["step"], r["loss"], r["grad_norm"],
              r["lr"]) for r in recs if r.get("kind") != "validation"]
    val = [(r["step"], r["score"], r["tasks"],
            r["best_step"]) for r in recs if r.get("kind") == "validation"]
    return train, val


def check_against(out: Path, reference: Path, steps: int, val_every: int) -> list[str]:
    """Everything in which the faulted run differs from the uninterrupted one (empty: bit-equal)."""
    problems = []
    if not (out / "final" / "model.safetensors").is_file():
        return [f"no {out}/final/model.safetensors"]
    differ = differing_tensors(final_tensors(out), final_tensors(reference))
    if differ:
        problems.append(f"final/model.safetensors: {len(differ)} tensors differ from the "
                        f"uninterrupted run's, e.g. {differ[0]}")
    recs = metrics(out)
    train_steps = [r["step"] for r in recs if r.get("kind") != "validation"]
    if train_steps != list(range(steps)):
        problems.append(f"metrics.jsonl: training steps {train_steps}, not each of 0..{steps - 1} "
                        "once")
    want_val = sorted({0, steps, *range(val_every, steps + 1, val_every)})
    val_steps = [r["step"] for r in recs if r.get("kind") == "validation"]
    if val_steps != want_val:
        problems.append(f"metrics.jsonl: validations at {val_steps}, not each of {want_val} once")
    mine, theirs = _numbers(recs), _numbers(metrics(reference))
    for what, a, b in (("training", mine[0], theirs[0]), ("validation", mine[1], theirs[1])):
        bad = [x[0] for x, y in zip(a, b) if x != y]
        if bad or len(a) != len(b):
            problems.append(f"metrics.jsonl: {what} numbers differ from the uninterrupted run's at "
                            f"steps {bad[:10]}")
    best_a, best_b = out / "best" / "raymeta_best.json", reference / "best" / "raymeta_best.json"
    if best_a.is_file() != best_b.is_file():
        problems.append("best/: present in one run only")
    elif best_b.is_file():
        sa, sb = json.loads(best_a.read_text())["step"], json.loads(best_b.read_text())["step"]
        if sa != sb:
            problems.append(f"best/: step {sa}, the uninterrupted run's {sb}")
        elif differing_tensors(final_tensors(out, "best"), final_tensors(reference, "best")):
            problems.append("best/model.safetensors differs from the uninterrupted run's")
    ckpts = out / "checkpoints"
    hidden = [p.name for p in ckpts.iterdir() if p.name.startswith(".")] if ckpts.is_dir() else []
    if hidden:
        problems.append(f"checkpoints/: leftovers of killed writers {hidden}")
    return problems


RECOVERED = re.compile(r"task '(\w+)': actor died at step (\d+); restarted every task actor from "
                       r"(.+) \(restart (\d+)")
RESTART_LOST = re.compile(r"task '(\w+)': actor died while the task actors restarted \(restart "
                          r"(\d+)")
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")


def survived(faults: list[Fault], fired: list[dict], runs: list[dict]) -> dict[int, str]:
    """Per fired fault, how the run got past it (a recovery's warning, a resume's line), '' when
    nothing says so. Matched in order within each driver process's log: the n-th actor fault of a
    run by its n-th recovery line."""
    why: dict[int, str] = {}
    for r in runs:
        text = Path(r["stderr"]).read_text()
        mine = [f for f in fired if f["run"] == r["run"]]
        recovered = [m.group(0) for m in RECOVERED.finditer(text)]
        lost = [m.group(0) for m in RESTART_LOST.finditer(text)]
        for f in mine:
            if f["kind"] == "resume_start":  # recovered like a lost actor in a step
                got = recovered.pop(0) if recovered else ""
                why[f["index"]] = got if f"'{f['task']}'" in got else (got and "(another task) "
                                                                       f"{got}")
            elif f["kind"] == "restart":
                why[f["index"]] = lost.pop(0) if lost else ""
            elif f["kind"] != "driver":
                got = recovered.pop(0) if recovered else ""
                why[f["index"]] = got if f"'{f['task']}'" in got else (got and "(another task) "
                                                                       f"{got}")
    for f in fired:
        if f["kind"] == "driver":
            nxt = [r for r in runs if r["run"] == f["run"] + 1]
            m = RESUMED.search(Path(nxt[0]["stderr"]).read_text()) if nxt else None
            why[f["index"]] = (m.group(0) if m and nxt[0]["returncode"] in (0, -signal.SIGKILL)
                               else "")
    return why


def run_campaign(seed: int, reduce: str, work: Path, address: str, *, reference: Path | None = None,
                 steps: int = STEPS, every: int = EVERY, val_every: int = VAL_EVERY) -> dict:
    """The campaign for ``seed`` under ``meta.reduce: reduce``, in ``work``, on the Ray cluster at
    ``address``. Returns its summary (also ``work/summary.json``); raises :class:`CampaignFailed`
    with the replay command."""
    import yaml

    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    data_dir, cache = write_data(work / "data"), work / "cache"
    faults = plan(seed, reduce, steps, every, val_every)
    print(f"fault campaign seed={seed} reduce={reduce}: {len(faults)} faults\n  "
          + "\n  ".join(f.describe() for f in faults), flush=True)
    timings: dict[str, float] = {}

    if reference is None:
        ref_work = work / "reference"
        ref_work.mkdir(exist_ok=True)
        cfg = ref_work / "exp.yaml"
        cfg.write_text(yaml.safe_dump(campaign_config(ref_work, data_dir, cache, reduce, address,
                                                      steps, every, val_every)))
        r = run_driver(ref_work, "driver-0", cfg, plan_file=None, resume=False, run=0)
        timings["uninterrupted_s"] = r["seconds"]
        if r["returncode"] != 0:
            raise CampaignFailed(f"the uninterrupted run failed (exit {r['returncode']}): "
                                 f"{r['stderr']}\n"
                                 + Path(r["stderr"]).read_text()[-3000:])
        reference = ref_work / "run"
        saves_file = ref_work / "saves.jsonl"
    else:
        saves_file = reference.parent / "saves.jsonl"
    resolve_driver_points(faults, {s["step"]: s["points"] for s in read_lines(saves_file)})
    (work / "plan.json").write_text(json.dumps([dataclasses.asdict(f) for f in faults], indent=1))
    print("  resolved: " + "; ".join(f.describe() for f in faults if f.kind == "driver"),
          flush=True)

    cfg = work / "exp.yaml"
    cfg.write_text(yaml.safe_dump(campaign_config(work, data_dir, cache, reduce, address, steps,
                                                  every, val_every)))
    out = work / "run"
    (work / "fired.jsonl").unlink(missing_ok=True)
    runs: list[dict] = []
    resume, problems = False, []
    t_faulted = time.time()
    for n in range(1, 2 + sum(f.kind == "driver" for f in faults)):
        r = run_driver(work, f"driver-{n}", cfg, plan_file=work / "plan.json", resume=resume, run=n)
        r["run"] = n
        runs.append(r)
        fired = read_lines(work / "fired.jsonl")
        if r["returncode"] == 0:
            break
        killed_itself = bool(fired) and fired[-1]["kind"] == "driver" and fired[-1]["run"] == n
        if r["returncode"] == -signal.SIGKILL and killed_itself:
            resume = True
            continue
        problems.append(f"driver process {n} ended with exit {r['returncode']} (not a planned "
                        f"kill); stderr {r['stderr']}:\n" + Path(r["stderr"]).read_text()[-3000:])
        break
    timings["faulted_s"] = round(time.time() - t_faulted, 1)
    fired = read_lines(work / "fired.jsonl")
    if not problems and runs[-1]["returncode"] != 0:
        problems.append("the run never finished: every driver process was killed")
    missing = [f.describe() for f in faults if f.index not in {x["index"] for x in fired}]
    if missing:
        problems.append(f"faults never fired: {missing}")
    if [x["index"] for x in fired] != sorted({x["index"] for x in fired}):
        problems.append(f"faults fired out of order or twice: {[x['index'] for x in fired]}")
    if not problems:
        problems += check_against(out, reference, steps, val_every)
    how = survived(faults, fired, runs)
    equal = not problems
    by_kind = {k: {"planned": 0, "injected": 0, "survived": 0, "bit_equal": 0}
               for k in KINDS}
    for f in faults:
        by_kind[f.kind]["planned"] += 1
    for x in fired:
        k = by_kind[x["kind"]]
        k["injected"] += 1
        k["survived"] += bool(how.get(x["index"]))
        k["bit_equal"] += equal and bool(how.get(x["index"]))
    unsurvived = [x["index"] for x in fired if not how.get(x["index"])]
    if unsurvived and equal:
        problems.append(f"faults {unsurvived}: no recovery or resume line found for them in the "
                        "driver's log")
    timings["total_s"] = round(time.time() - t0, 1)
    summary = {
        "seed": seed, "reduce": reduce, "steps": steps, "checkpoint_every": every,
               "validation_every": val_every,
        "passed": not problems, "bit_equal": equal, "by_kind": by_kind,
        "faults": [{**x, "survived": how.get(x["index"], "")} for x in fired],
        "driver_processes": [{k: r[k] for k in ("name", "returncode", "seconds",
                                                "resume")} for r in runs],
        "timings": timings, "problems": problems, "workdir": str(work), "reference": str(reference),
        "replay": replay_commands(seed, reduce),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("seed", "reduce", "passed", "by_kind",
                                              "driver_processes", "timings")}),
          flush=True)
    if problems:
        raise CampaignFailed(f"fault campaign seed={seed} reduce={reduce} failed "
                             f"({work}/summary.json):\n- "
                             + "\n- ".join(problems) + "\n" + replay_commands(seed, reduce))
    return summary


# -- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fault_campaign",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="a whole campaign on a Ray head of its own")
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--reduce", choices=["driver", "collective"], required=True)
    r.add_argument("--workdir", type=Path, help="(default: a new temporary directory, kept)")
    r.add_argument("--reference", type=Path,
                   help="output_dir of an earlier uninterrupted run of this reduce mode")
    r.add_argument("--plan-only", action="store_true", help="print the plan and exit")
    d = sub.add_parser("drive",
                       help="(internal) one driver process: the plan's kills, then `raymeta train`")
    d.add_argument("--config", required=True)
    d.add_argument("--plan")
    d.add_argument("--fired", required=True)
    d.add_argument("--saves", required=True)
    d.add_argument("--run", type=int, default=0)
    d.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "drive":
        return drive(args)
    if args.plan_only:
        print("\n".join(f.describe() for f in plan(args.seed, args.reduce)))
        return 0
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    from tests.integration.cluster import head

    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"fault-campaign-{args.seed}-"
                                                        f"{args.reduce}-"))
    work.mkdir(parents=True, exist_ok=True)
    with head(work) as h:
        try:
            run_campaign(args.seed, args.reduce, work / "campaign", h["address"],
                         reference=args.reference)
        except CampaignFailed as e:
            print(e, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
