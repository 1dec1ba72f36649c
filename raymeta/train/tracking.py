"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard event files and one console line per
step, plus the task-affinity heatmap (pairwise cosine similarity of task gradients) at the end.

Step numbers: a training record's ``step`` (metrics.jsonl, TensorBoard's global step, the console's
``step s``) is the step's index, the meta-steps done before it (0..N-1); a validation record's
``step`` is the number of meta-steps done when it ran (0 = the starting model, then every_steps,
..., N), so ``val/score`` at step 4 scores the parameters after the training record of step 3. A
resume or recovery at step s drops the training records from s on and the validation at s (which
runs again)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.jsonio import dumps as strict_dumps
from .record import StepRecord

__all__ = ["Tracker"]

log = logging.getLogger("raymeta.train")


def _logged_affinity(record: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """A metrics.jsonl record's task-gradient cosines (to 5 decimals), over the tasks that entered
    the step."""
    used = list(record["weights"])
    cosine = np.eye(len(used))
    for i, a in enumerate(used):
        for j in range(i + 1, len(used)):
            c = record["affinity"][f"{a}|{used[j]}"]
            cosine[i, j] = cosine[j, i] = math.nan if c is None else c  # null: written from a NaN
    return used, cosine


class Tracker:
    def __init__(self, output_dir: Path, tasks: list[str], *, start_step: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        """``clock``: seconds, for the time-left estimate of the step lines."""
        self.dir = Path(output_dir)
        self.tasks = tasks
        self.clock = clock
        self._opened = 0
        self._open(start_step)

    def _open(self, start_step: int) -> None:
        """Log from ``start_step`` on. Records of later steps are dropped: those steps run again
        (resume, actor-crash recovery) and must not count twice — in metrics.jsonl, TensorBoard or
        the affinity."""
        from tensorboardX import SummaryWriter

        path = self.dir / "metrics.jsonl"
        kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] < start_step] \
            if start_step and path.is_file() else []
        self.jsonl = path.open("w", encoding="utf-8")
        self.jsonl.writelines(ln + "\n" for ln in kept)
        # purge_step: TensorBoard hides the earlier files' events from start_step on. Each writer
        # gets its own file name: two writers in the same second would share one, and the second
        # truncates it.
        self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step,
                                filename_suffix=f".{os.getpid()}.{self._opened:03d}")
        self._opened += 1
        self._since = (start_step, self.clock())  # where this process's timing started
        n = len(self.tasks)
        self.cos_sum, self.cos_n = np.zeros((n, n)), np.zeros((n, n))
        for rec in map(json.loads, kept):  # the affinity of the kept steps, as logged
            if "affinity" in rec and set(rec["weights"]) <= set(self.tasks):
                used, cosine = _logged_affinity(rec)
                self._add_affinity([self.tasks.index(t) for t in used], cosine)

    def rewind(self, step: int) -> None:
        """Back to ``step`` after a recovery: the steps from there on run again."""
        self.close()
        self._open(step)

    def _add_affinity(self, idx: list[int], cosine: np.ndarray) -> None:
        self.cos_sum[np.ix_(idx, idx)] += cosine
        self.cos_n[np.ix_(idx, idx)] += 1

    def step(self, rec: StepRecord) -> None:
        """A meta-step's record: its ``metrics.jsonl`` line (with the task affinity, when the step
        measured it), TensorBoard scalars and console line. All three number it by its index, the
        meta-steps done before it (0..N-1): ``"step": 4`` is the fifth step; the console line adds
        ``(5/N done)``. Validation records (:meth:`validation`) count the steps done when they ran
        instead: 0 (before training), every_steps, ..., N."""
        record, step, cosine, used = rec.to_json(), rec.step, rec.cosine, rec.used
        if cosine is not None:
            self._add_affinity([self.tasks.index(t) for t in used], cosine)
            record["affinity"] = {f"{a}|{b}": round(float(cosine[i, j]), 5)
                                  for i, a in enumerate(used) for j, b in enumerate(used) if i < j}
        # strict JSON: a NaN loss is written as null and named under "nonfinite"
        # (raymeta.core.jsonio)
        self.jsonl.write(strict_dumps(record) + "\n")
        self.jsonl.flush()
        for task, loss in record["loss"].items():
            self.tb.add_scalar(f"loss/{task}", loss, step)
        for task, w in record["weights"].items():
            self.tb.add_scalar(f"mixture/{task}", w, step)
        for task, c in (record.get("alignment") or {}).items():  # meta.weighting.rule alignment
            self.tb.add_scalar(f"weights/{task}", record["weights"].get(task, 0.0), step)
            if c is not None:
                self.tb.add_scalar(f"alignment/{task}", c, step)
        if "mixture_entropy" in record:  # learned weights: how much of a mixture the mixture is
            self.tb.add_scalar("mixture/entropy", record["mixture_entropy"], step)
        for key in ("grad_norm", "lr", "step_s", "compute_max_s"):
            self.tb.add_scalar(f"train/{key}", record[key], step)
        # non-finite, left out (nan_policy)
        self.tb.add_scalar("train/skipped_tasks", len(record["skipped"]), step)
        for pair, c in record.get("affinity", {}).items():
            # "|" is not a legal tag character
            self.tb.add_scalar("affinity/" + pair.replace("|", "/"), c, step)
        losses = " ".join(f"{t}={v:.3f}" for t, v in record["loss"].items())
        skipped = f" skipped={','.join(record['skipped'])}" if record["skipped"] else ""
        # "step" as in metrics.jsonl and TensorBoard (the step's index, 0..N-1), then how many are
        # done (1..N)
        log.info("step %d (%d/%d done) | loss %s | |g| %.3f | lr %.2e | %.2fs (slowest actor "
                 "%.2fs)%s%s", step, step + 1, record["steps"], losses, record["grad_norm"],
                 record["lr"], record["step_s"], record["compute_max_s"], skipped,
                 self.time_left(step, record["steps"]))

    def time_left(self, step: int, steps: int) -> str:
        """`` | about N min left`` after step ``step``: the wall time per step so far in this
        process (validations and checkpoints included), times the steps to go; empty before two
        steps are done here (the first carries the start-up) and after the last."""
        first, t0 = self._since
        done, left = step + 1 - first, steps - step - 1
        if done < 2 or left <= 0:
            return ""
        seconds = (self.clock() - t0) / done * left
        return f" | about {seconds:.0f} s left" if seconds < 90 else \
            f" | about {seconds / 60:.0f} min left"

    def validation(self, record: dict[str, Any]) -> None:
        """A meta-validation record (``kind: validation``; its ``step`` counts the meta-steps done
        before it). With several settings (``eval.validation.settings``, or ``select: no_harm``) it
        carries each setting's score and, after step 0, its paired gain over step 0 with the 95% CI:
        TensorBoard shows them as ``val/<setting>/score``, ``val/<setting>/gain`` and
        ``val/<setting>/gain_lower`` (the CI's lower bound, which no_harm reads)."""
        step = record["step"]
        self.jsonl.write(strict_dumps(record) + "\n")
        self.jsonl.flush()
        self.tb.add_scalar("val/score", record["score"], step)
        self.tb.add_scalar("val/seconds", record["seconds"], step)
        for task, v in record["tasks"].items():
            self.tb.add_scalar(f"val/{task}", v, step)
        for name, s in record.get("settings", {}).items():
            for key in ("score", "gain", "gain_lower"):
                if key in s and s[key] is not None and math.isfinite(s[key]):
                    self.tb.add_scalar(f"val/{name}/{key}", s[key], step)
        self.tb.flush()
        tasks = " ".join(f"{k}={v:.3f}" for k, v in record["tasks"].items())
        best = "new best" if record["improved"] \
            else f"best {record['best_score']:.4f} at step {record['best_step']}"
        settings = ""
        if "settings" in record:  # each setting's score, and its gain over step 0 with the CI
            settings = " | " + " ".join(
                f"{n}={s['score']:.3f}" + (f" ({s['gain']:+.3f} ± {s['gain_ci95']:.3f})"
                                           if "gain" in s else "")
                for n, s in record["settings"].items()) + \
                (" [a setting's loss may exceed the tolerance]" if "gain" in record
                 and not record["qualifies"] else "")
        log.info("validation at step %d: score %.4f ± %.4f (%s)%s | %s | %.1fs", step,
                 record["score"], record["ci95"], tasks,
                 settings, best, record["seconds"])

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Extra TensorBoard scalars, e.g. a Tune trial's meta-validation score."""
        for tag, v in values.items():
            self.tb.add_scalar(tag, v, step)
        self.tb.flush()

    def affinity_png(self) -> Path | None:
        if len(self.tasks) < 2 or not self.cos_n.any():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mean = np.divide(self.cos_sum, self.cos_n, out=np.full_like(self.cos_sum, np.nan),
                         where=self.cos_n > 0)
        fig, ax = plt.subplots(figsize=(1.2 * len(self.tasks) + 3, 1.0 * len(self.tasks) + 2))
        im = ax.imshow(mean, vmin=-1, vmax=1, cmap="RdBu")
        ax.set_xticks(range(len(self.tasks)), self.tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(self.tasks)), self.tasks)
        for i in range(len(self.tasks)):
            for j in range(len(self.tasks)):
                if not np.isnan(mean[i, j]):
                    ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title("task affinity: mean cosine of task gradients")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        path = self.dir / "task_affinity.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        np.save(self.dir / "task_affinity.npy", mean)
        return path

    def weights_png(self) -> Path | None:
        """``task_weights.png``: each task's mixture weight over the steps, from metrics.jsonl (a
        resumed run's earlier steps included), when the weights moved (``meta.weighting.rule:
        alignment``)."""
        path = self.dir / "metrics.jsonl"
        recs = [r for r in map(json.loads,
                               path.read_text().splitlines()) if r.get("kind") != "validation"] \
            if path.is_file() else []
        if not any("alignment" in r for r in recs):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        entropies = [r for r in recs if "mixture_entropy" in r]
        fig, axes = plt.subplots(1, 2 if entropies else 1, figsize=(13 if entropies else 8, 4.5),
                                 squeeze=False)
        ax = axes[0][0]
        for task in self.tasks:
            ax.plot([r["step"] for r in recs], [r["weights"].get(task, math.nan) for r in recs],
                    label=task)
        ax.set_xlabel("meta-step")
        ax.set_ylabel("mixture weight")
        ax.set_title("task weights (meta.weighting.rule: alignment)")
        ax.legend(fontsize=8)
        if entropies:  # exp(H): how many tasks' worth the mixture is
            ax = axes[0][1]
            ax.plot([r["step"] for r in entropies],
                    [math.exp(r["mixture_entropy"]) for r in entropies], label="exp(H(w))")
            n = len({t.split("#")[0] for t in self.tasks})
            ax.axhline(n, color="grey", linestyle=":", label=f"all {n} tasks equal")
            ax.set_ylim(0, n + 0.5)
            ax.set_xlabel("meta-step")
            ax.set_ylabel("effective number of tasks")
            ax.set_title("the mixture's entropy, as exp(H)")
            ax.legend(fontsize=8)
        fig.tight_layout()
        out = self.dir / "task_weights.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def curves_png(self) -> Path | None:
        """``training_curves.png``: each task's loss over the steps and, with meta-validation, the
        validation score at each validated step (step 0, the starting model, included), from
        metrics.jsonl (a resumed run's earlier steps included)."""
        path = self.dir / "metrics.jsonl"
        recs = [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []
        steps = [r for r in recs if r.get("kind") != "validation"]
        vals = [r for r in recs if r.get("kind") == "validation"]
        if not steps:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2 if vals else 1, figsize=(12 if vals else 7, 4.2),
                                 squeeze=False)
        ax = axes[0][0]
        for task in self.tasks:
            ax.plot([r["step"] for r in steps],
                    [math.nan if r["loss"].get(task) is None else r["loss"][task] for r in steps],
                    label=task)
        ax.set_xlabel("meta-step")
        ax.set_ylabel("outer loss")
        ax.set_title("meta-training loss per task")
        ax.legend(fontsize=8)
        if vals:
            ax = axes[0][1]
            ax.errorbar([r["step"] for r in vals], [r["score"] for r in vals],
                        yerr=[r.get("ci95") or 0.0 for r in vals], marker="o", capsize=3)
            ax.set_xlabel("meta-steps done")
            ax.set_ylabel("validation score (± 95% CI)")
            ax.set_title("meta-validation")
        fig.tight_layout()
        out = self.dir / "training_curves.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def pictures(self) -> list[Path]:
        """The run's pictures, at its end: the task affinity, the mixture over the steps (learned
        weights), and the training curves."""
        return [p for p in (self.affinity_png(), self.weights_png(), self.curves_png()) if p]

    def flush(self) -> None:
        """Everything logged so far on disk (before the run's files are mirrored to a storage
        URI)."""
        self.jsonl.flush()
        self.tb.flush()

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()
