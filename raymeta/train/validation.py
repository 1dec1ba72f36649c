"""Meta-validation during meta-training, and the choice of ``<output_dir>/best``.

A meta-learner is meant to adapt well to *new* tasks, and its training loss does not say whether it
does: the encoder can fit its meta-training tasks while drifting away from what transfers (Murty et
al. 2021; Bansal et al. 2020 select on held-out tasks too). So the trainer scores the starting model
(step 0) and then every ``eval.validation.every_steps`` on validation tasks that are disjoint from
every meta-training task, and exports the best-scoring step, step 0 included: a run never hands back
an encoder that validates worse than the one it started from.

Two kinds of method, both the evaluation layer's own:
- ``prototype``, ``ridge``, ``svm``: the episodic score of :mod:`raymeta.eval.scoring` (seeded N-way
  K-shot episodes, over pooled embeddings of a fixed seeded subsample of rows, classified by the
  nearest prototype, Snell et al. 2017, with ``meta.proto.distance``, or by MetaOptNet's ridge or
  SVM head), the very scorer and protocol (:class:`~raymeta.config.EpisodicProtocol`) that ``raymeta
  tune`` ranks its trials by. It runs on the task actors, which already hold a replica of the model:
  each scores a share of the tasks, and imports only that light scorer.
- ``finetune``: K-shot fine-tuning (:func:`raymeta.eval.evaluate.evaluate`) of the exported step, as
  Ray tasks (imported when that method runs).

Several settings (``eval.validation.settings``, e.g. prototype at 1 and 5 shots and finetune at 8):
every validated step is scored at each, because a step can gain at one and lose at another
(benchmarks/results/recipes.md#general-purpose-with-setfit: a general-purpose init gains at 1 shot
and loses 0.5 to 1.9 points at 5), which a choice made at one setting never sees. ``select`` says
how ``best`` is chosen from them:

- ``mean``: the highest score, the mean of the settings' scores (with one setting, the rule as it
  always was);
- ``no_harm`` (the default with several settings): only a step that does no harm at any setting may
  become ``best``: at every setting, the 95% CI (:func:`~raymeta.eval.metrics.mean_ci95`, Student's
  t) of its paired gain over step 0 must reach no lower than ``-tolerance``. Paired, because each
  setting scores the same seeded episodes (or K-shot splits) at every validation: the per-episode
  differences from step 0, pooled over the validation tasks, have a far smaller spread than two
  independent scores. Among the steps that qualify, the highest mean gain over step 0 wins (the
  highest mean score: step 0's is fixed), and when none does, ``best`` stays step 0, the starting
  model. A step's qualification depends on it and step 0 only, so the choice is greedy, as with
  ``mean``.

Step 0's per-episode values are what every later step is paired with: they are kept by the
:class:`Validator`, and written beside ``best``'s score (``best/raymeta_step0.json``, in the same
atomic export), so that ``--resume`` and an actor-crash recovery pair later steps with the same
values and choose the same ``best``.

The pure pieces (summaries, paired gains, the overlap check) need no Ray; the
:class:`Validator` that the trainer calls once per validation step does the Ray calls.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..cluster import get
from ..config import EpisodicProtocol, ExperimentConfig, ValidationSetting
from ..config.resolve import wants_best
from ..core.checkpoint import export_model
from ..core.jsonio import dumps as strict_dumps
from ..eval.metrics import mean_ci95
from ..eval.scoring import setting_protocols
from .state import StepState, Workers
from .validation_tasks import check_validation_rows, validation_specs
from .worker import worker_of

__all__ = ["BEST_JSON", "STEP0_JSON", "Validator", "ValidationState", "combine_settings",
           "paired_gain", "summarise_scores"]

log = logging.getLogger("raymeta.train")

BEST_JSON = "raymeta_best.json"  # beside the model in <output_dir>/best: which step, which score
# beside it (with eval.validation.settings or select: no_harm): step 0's per-episode (per-split)
# values per setting, which every later step's gain is paired with; read back on resume
STEP0_JSON = "raymeta_step0.json"


def summarise_scores(per_task: dict[str, list[float]]) -> dict[str, Any]:
    """The score is the mean over tasks of each task's mean; the CI is over the pooled values
    (:func:`raymeta.eval.metrics.mean_ci95`, Student's t)."""
    means = {k: float(np.mean(v)) for k, v in per_task.items()}
    pooled = mean_ci95([x for v in per_task.values() for x in v])
    return {"score": float(np.mean(list(means.values()))), "ci95": pooled["ci95"], "tasks": means,
            "n": pooled["n"]}


def combine_settings(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The step's score over several settings: the mean of the settings' scores (and of each task's
    means). Its ``ci95`` is the mean of theirs, an upper bound on the CI of that mean (the settings
    score the same encoder on the same tasks, so they are correlated, and the spread of a mean is at
    most the mean of the spreads). One setting: its own summary."""
    if len(summaries) == 1:
        return summaries[0]
    tasks = list(summaries[0]["tasks"])
    return {"score": float(np.mean([s["score"] for s in summaries])),
            "ci95": float(np.mean([s["ci95"] for s in summaries])),
            "tasks": {t: float(np.mean([s["tasks"][t] for s in summaries])) for t in tasks},
            "n": int(sum(s["n"] for s in summaries))}


def paired_gain(values: dict[str, list[float]], reference: dict[str, list[float]], score: float,
                reference_score: float) -> dict[str, float]:
    """A setting's gain over step 0: ``score - reference_score`` (its score is the mean of the task
    means), and the 95% CI half-width (:func:`~raymeta.eval.metrics.mean_ci95`, Student's t) of the
    per-episode (per-split) differences from step 0's values of the same episodes, pooled over the
    tasks (each task has as many, so their mean is that gain); ``gain_lower`` is the CI's lower
    bound (NaN from a single value)."""
    diffs: list[float] = []
    for task, ref in reference.items():
        now = values[task]
        if len(now) != len(ref):
            raise ValueError(f"paired_gain: task '{task}' has {len(now)} values, step 0 had "
                             f"{len(ref)}")
        diffs += [a - b for a, b in zip(now, ref)]
    ci = mean_ci95(diffs)["ci95"]
    gain = score - reference_score
    return {"gain": gain, "gain_ci95": ci, "gain_lower": gain - ci}


@dataclass
class ValidationState:
    """The best step so far and how many validations since; read back from ``best`` on resume.
    ``rows``: per validated step (of this run, earlier ones read back from metrics.jsonl on resume),
    what the summary table shows."""

    best_score: float = -math.inf
    best_step: int | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


class Validator:
    """Scores the trainer's current parameters on the validation tasks at each setting, on Ray;
    keeps the best."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.v = cfg, cfg.eval.validation
        assert self.v is not None
        self.specs = validation_specs(cfg)
        self.settings: list[ValidationSetting] = self.v.resolved_settings()
        self.names: list[str] = self.v.setting_names()
        self.protocols: list[EpisodicProtocol | None] = setting_protocols(cfg)  # None: finetune
        self.select, self.tolerance = self.v.selection, self.v.tolerance
        # the records carry each setting's score and gain (without settings and no_harm: the records
        # as they were)
        self.detailed = self.v.settings is not None or self.select == "no_harm"
        # before Ray starts: the trainer builds its Validator first
        check_validation_rows(cfg, self.specs)
        self.out = out
        self.best_dir = out / "best"
        self.export_best = wants_best(cfg)
        self.state = ValidationState()
        self.reference: list[dict[str, list[float]]] | None = None  # step 0's values per setting
        self.reference_scores: list[float] | None = None
        # the last validation's per-setting detail (best_files)
        self._last: dict[str, Any] | None = None
        self._warned = False

    def due(self, step: int, last: int) -> bool:
        """Validate at step 0 (the starting model), every ``every_steps``, and at the last step."""
        assert self.v is not None
        return step == 0 or step % self.v.every_steps == 0 or step == last

    def _fingerprint(self) -> dict[str, Any]:
        """What step 0's values depend on, besides the parameters: the tasks, and each setting's
        protocol (or fine-tuning settings). A resume pairs with stored values only when it is
        unchanged."""
        e = self.cfg.eval
        finetune = {"seed": self.cfg.seed, "steps": e.finetune_steps, "lr": e.finetune_lr,
                    "head_lr": e.head_lr,
                    "batch_size": e.batch_size, "max_test": e.max_test_examples,
                    "pooling": self.cfg.model.pooling}
        return {"tasks": [s.name for s in self.specs],
                "settings": [{"name": n, **s.model_dump(),
                              **(json.loads(p.model_dump_json(exclude={"key",
                                                                       "split_key"}))
                                 if p is not None else finetune)}
                             for n, s, p in zip(self.names, self.settings, self.protocols)]}

    def resume(self, step: int) -> None:
        """Before the validation at ``step`` runs again after a resume or a recovery: the best so
        far from ``best/raymeta_best.json``, and how many validations came after it (those strictly
        between). A best from ``step`` on belongs to the timeline being replayed and is forgotten:
        the replay finds it again. Step 0's values (what gains are paired with) are kept from this
        process or read from ``best/raymeta_step0.json`` (step 0 is the same in every timeline); the
        summary table's rows of the steps before ``step`` come back from metrics.jsonl."""
        assert self.v is not None
        self.state = ValidationState()
        self._last = None
        if step == 0:
            self.reference = self.reference_scores = None
        elif self.reference is None:
            self._read_reference()
        metrics = self.out / "metrics.jsonl"
        if step > 0 and metrics.is_file():
            for rec in map(json.loads, metrics.read_text().splitlines()):
                if rec.get("kind") == "validation" and rec["step"] < step:
                    self.state.rows.append(self._row_of_record(rec))
        f = self.best_dir / BEST_JSON
        if not f.is_file():
            return
        rec = json.loads(f.read_text())
        if rec["step"] < step:
            self.state.best_score, self.state.best_step = float(rec["score"]), int(rec["step"])
            every = self.v.every_steps
            self.state.since_best = (step - 1) // every - rec["step"] // every

    def _read_reference(self) -> None:
        f = self.best_dir / STEP0_JSON
        if not f.is_file():
            return
        ref = json.loads(f.read_text())
        if ref.get("fingerprint") != json.loads(strict_dumps(self._fingerprint())):
            log.warning("validation: %s was written for other validation tasks or settings; the "
                        "gains over step 0 "
                        "after this resume are unknown (and under select: no_harm no later step "
                        "can become best)", f)
            return
        self.reference, self.reference_scores = ref["values"], [float(x) for x in ref["scores"]]

    def __call__(self, s: StepState, w: Workers, collective: bool) -> dict[str, Any]:
        """Score the parameters after ``s.step`` meta-steps at every setting: the driver's
        (``reduce: driver``) or the actors' own (``collective``). Returns the validation record,
        with ``improved`` (export ``best`` now) and ``stop`` (early stopping: no new best for
        ``patience`` validations)."""
        t0 = time.perf_counter()
        return self.judge(s.step, self._score(s, w, collective), t0)

    @property
    def exports_step(self) -> bool:
        """A finetune setting scores an export of the driver's copy: it must be current first."""
        return any(p is None for p in self.protocols)

    def export(self, record: dict[str, Any], s: StepState) -> None:
        """Export the driver's (current) parameters as ``best``, with the validation score on the
        model card; ``raymeta_best.json`` (and step 0's values, for a resume) travel with the
        weights, in one atomic export."""
        metric = f"mean accuracy ({record['method']}, eval.validation)" if self.v.settings is None \
            else f"mean accuracy over settings {', '.join(self.names)} (eval.validation, " \
                 f"select: {self.select})"
        card = {"validation_score": record["score"], "validation_step": record["step"],
                "validation_tasks": list(record["tasks"]), "validation_metric": metric}
        export_model(self.best_dir, s.encoder, s.tokenizer, cfg=s.cfg, step=s.step, card=card,
                     files=self.best_files(record))

    def exported_at(self, step: int) -> Path | None:
        """``best/`` when it holds the parameters of ``step`` (its ``raymeta_best.json`` names that
        step), else None: ``final/`` at the same step shares its weights' files
        (:func:`raymeta.core.checkpoint.share_files`, which checks the bytes too)."""
        try:
            rec = json.loads((self.best_dir / BEST_JSON).read_text())
        except (OSError, ValueError):
            return None
        return self.best_dir if isinstance(rec, dict) and rec.get("step") == step else None

    def log_summary(self, step: int, stopped: bool, shown: Callable[[Path], str]) -> None:
        """The run's last lines on validation: the best step and its score, where ``best`` went
        (``shown``: a path as the user knows it), and per validated step each setting's paired
        gain over step 0."""
        st, spent = self.state, sum(r["seconds"] for r in self.state.history)
        where = shown(self.best_dir) if self.export_best \
            else "not exported (checkpoint.best: false)"
        how = f"stopped early at step {step} (no new best for " \
              f"{self.v.early_stopping.patience} validations); " \
            if stopped and self.v.early_stopping else ""
        rule = f" (select: {self.select})" if self.detailed else ""
        log.info("%sbest step %s%s, validation score %.4f: %s (%d validations, %.1f s)", how,
                 st.best_step, rule, st.best_score, where, len(st.history), spent)
        for line in self.table():  # per step: each setting's paired gain over step 0, the chosen
            log.info("%s", line)

    def judge(self, step: int, values: list[dict[str, list[float]]],
              t0: float | None = None) -> dict[str, Any]:
        """The record of ``step`` from each setting's per-task values (per episode, or per split for
        finetune), and the choice of ``best`` (:attr:`select`): step 0's values become the reference
        that every later step's gains are paired with. No Ray: what :meth:`__call__` does once the
        values are scored."""
        assert self.v is not None
        t0 = time.perf_counter() if t0 is None else t0
        summaries = [summarise_scores(v) for v in values]
        summary = combine_settings(summaries)
        if step == 0:
            self.reference = [{k: list(map(float, x)) for k, x in v.items()} for v in values]
            self.reference_scores = [s["score"] for s in summaries]
        gains: list[dict[str, float]] | None = None
        if step > 0 and self.reference is not None and self.reference_scores is not None:
            gains = [paired_gain(v, r, s["score"], rs)
                     for v, r, s, rs in zip(values, self.reference, summaries,
                                            self.reference_scores)]
        elif step > 0 and self.detailed and not self._warned:
            self._warned = True
            log.warning("validation at step %d: step 0's values are not known (checkpoint.best: "
                        "false, or changed "
                        "validation settings, and a resume): no gains over step 0 from here on",
                        step)
        # step 0 is the reference itself; a step whose gains are unknown cannot show that it does no
        # harm
        qualifies = step == 0 or (gains is not None and all(g["gain_lower"] >= -self.tolerance
                                                            for g in gains))
        st = self.state
        improved = summary["score"] > st.best_score and (qualifies or self.select == "mean")
        if improved:
            st.best_score, st.best_step, st.since_best = summary["score"], step, 0
        else:
            st.since_best += 1
        # the files carry gains only where they always can (detailed: step 0's values are persisted
        # for a resume), so that a resumed run writes what an uninterrupted one does; the summary
        # table shows them either way
        settings = {n: {**s, **(g if g is not None and self.detailed else {})}
                    for n, s, g in zip(self.names, summaries, gains or [None] * len(summaries))}
        mean_gain = float(np.mean([g["gain"] for g in gains])) if gains is not None else None
        self._last = {"step": step, "settings": settings, "qualifies": qualifies, "gain": mean_gain}
        patience = self.v.early_stopping.patience if self.v.early_stopping else None
        method = self.v.method if self.v.settings is None \
            else "+".join(dict.fromkeys(s.method for s in self.settings))
        record = {"step": step, "kind": "validation", "method": method, **summary}
        if self.detailed:
            record.update({"select": self.select, "settings": settings, "qualifies": qualifies,
                           **({"gain": mean_gain} if mean_gain is not None else {})})
        record.update({"seconds": time.perf_counter() - t0, "best_step": st.best_step,
                       "best_score": st.best_score,
                       "improved": improved,
                       "stop": patience is not None and st.since_best >= patience})
        st.history.append(record)
        st.rows.append({"step": step, "score": summary["score"],
                        "qualifies": qualifies if step == 0 or gains else None,
                        "gains": None if gains is None else {n: (g["gain"], g["gain_ci95"]) for n,
                                                             g in zip(self.names, gains)},
                        "scores": {n: s["score"] for n, s in zip(self.names, summaries)}})
        return record

    def _row_of_record(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A summary-table row from a metrics.jsonl record (a step before a resume)."""
        settings = rec.get("settings")
        if settings is None:  # one setting, recorded as it always was: its score, no paired gain
            return {"step": rec["step"], "score": rec["score"], "qualifies": None, "gains": None,
                    "scores": {self.names[0]: rec["score"]}}
        gains = {n: (s["gain"], s["gain_ci95"]) for n, s in settings.items() if "gain" in s}
        return {"step": rec["step"], "score": rec["score"], "qualifies": rec.get("qualifies"),
                "gains": gains if rec["step"] > 0 and len(gains) == len(settings) else None,
                "scores": {n: s["score"] for n, s in settings.items()}}

    def best_files(self, record: dict[str, Any]) -> dict[str, str]:
        """The files exported beside ``best``'s weights for the validation ``record`` just judged:
        ``raymeta_best.json`` (the step, its score, the selection rule and each setting's score and
        gain over step 0, with its 95% CI) and, when gains are recorded, ``raymeta_step0.json``
        (step 0's values, for a resume)."""
        assert self.v is not None and self._last is not None
        assert self._last["step"] == record["step"]
        best = {k: record[k] for k in ("step", "score", "ci95", "tasks", "n", "method")}
        best.update({"select": self.select, "tolerance": self.tolerance,
                     "settings": self._last["settings"]})
        if self.detailed:
            best.update({"qualifies": self._last["qualifies"],
                         **({"gain": self._last["gain"]} if self._last["gain"] is not None
                            else {})})
        files = {BEST_JSON: strict_dumps({**best, "validation": self.v.model_dump()}, indent=1)}
        if self.detailed and self.reference is not None and self.reference_scores is not None:
            files[STEP0_JSON] = strict_dumps({"fingerprint": self._fingerprint(),
                                              "scores": self.reference_scores,
                                              "values": self.reference})
        return files

    def table(self) -> list[str]:
        """The summary table, one line per validated step: each setting's gain over step 0 with its
        95% CI, whether the step qualifies under no_harm (every lower bound >= -tolerance), and the
        chosen step marked."""
        width = max(18, *(len(n) for n in self.names))
        head = f"{'step':>6}  " + "  ".join(f"{n:<{width}}" for n in self.names) + "  qualifies"
        lines = [f"validation by setting (select: {self.select}, tolerance {self.tolerance:g}; "
                 "gain over step 0 ± 95% CI, paired):", head]
        def num(x: Any, spec: str) -> str:
            return "n/a" if x is None or not math.isfinite(x) else format(x, spec)

        for row in self.state.rows:
            scores, gains = row["scores"], row["gains"] or {}
            if row["step"] == 0:
                cells = [f"{num(scores.get(n), '.4f')} (step 0)" for n in self.names]
            elif not all(n in gains for n in self.names):
                cells = [f"{num(scores.get(n), '.4f')} (no gain)" for n in self.names]
            else:
                cells = [f"{num(g, '+.4f')} ± {num(ci, '.4f')}" for g,
                         ci in (gains[n] for n in self.names)]
            q = "-" if row["qualifies"] is None else "yes" if row["qualifies"] else "no"
            mark = "  <- best" if row["step"] == self.state.best_step else ""
            padded = "  ".join(f"{c:<{width}}" for c in cells)
            lines.append(f"{row['step']:>6}  {padded}  {q:<9}{mark}".rstrip())
        return lines

    def _score(self, s: StepState, w: Workers, collective: bool) -> list[dict[str, list[float]]]:
        """Each setting's per-task values: the episodic settings in one round on the task actors,
        the finetune ones as Ray tasks."""
        out: list[dict[str, list[float]] | None] = [None] * len(self.settings)
        episodic = [i for i, p in enumerate(self.protocols) if p is not None]
        if episodic:
            for i, vals in zip(episodic, self._episodic(s, w, collective, episodic)):
                out[i] = vals
        finetune = [i for i, p in enumerate(self.protocols) if p is None]
        if finetune:
            for i, vals in self._finetune(s, finetune).items():
                out[i] = vals
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    def _episodic(self, s: StepState, w: Workers, collective: bool,
                  which: list[int]) -> list[dict[str, list[float]]]:
        """Round-robin over the task actors: each loads the published parameters (driver mode) or
        uses its own (collective mode: they are the current ones) and scores its share of the
        validation tasks at the settings ``which``."""
        import ray

        # one handle per process: the tasks of a worker (resources.workers) share its model
        actors = list({id(worker_of(a)): a for a in w.actors.values()}.values())
        shared = None if collective else ray.put(s.flat.numpy())
        protocols = [self.protocols[i].model_dump_json() for i in which]  # type: ignore[union-attr]
        jobs: dict[int, list[str]] = {}
        for i, spec in enumerate(self.specs):
            jobs.setdefault(i % len(actors), []).append(spec.model_dump_json())
        results = get([actors[i].validate.remote(shared, specs, protocols) for i,
                       specs in jobs.items()])
        del shared
        out: list[dict[str, list[float]]] = [{} for _ in which]
        for r in results:
            for mine, theirs in zip(out, r):
                mine.update(theirs)
        return [{t.name: o[t.name] for t in self.specs} for o in out]  # in the configured order

    def _finetune(self, s: StepState, which: list[int]) -> dict[int, dict[str, list[float]]]:
        """K-shot fine-tuning of the step's exported encoder at the settings ``which``, as Ray tasks
        that reserve no CPU: the actors hold the reservations, and they are idle while the
        validation runs. One export; one evaluation per number of splits (a K's splits and runs are
        seeded by K and split alone, so they do not depend on which other K are scored with it)."""
        # the fine-tuning stack: only for this method, never on the actors
        from ..eval.evaluate import evaluate
        from ..eval.finetune import FinetuneSettings

        assert self.v is not None
        e = self.cfg.eval
        tmp = self.out / ".validation" / f"step-{s.step:08d}"
        by_splits: dict[int, list[int]] = {}
        for i in which:
            by_splits.setdefault(int(self.settings[i].splits or 1), []).append(i)
        out: dict[int, dict[str, list[float]]] = {}
        try:
            export_model(tmp, s.encoder, s.tokenizer, pooling=self.cfg.model.pooling)
            settings = FinetuneSettings(steps=e.finetune_steps, lr=e.finetune_lr, head_lr=e.head_lr,
                                        batch_size=e.batch_size,
                                        max_test=e.max_test_examples)
            for splits, idx in by_splits.items():
                shots = list(dict.fromkeys(int(self.settings[i].shots or 1) for i in idx))
                res = evaluate(str(tmp), self.specs, shots=shots, n_splits=splits,
                               settings=settings,
                               seed=self.cfg.seed, data_dir=self.cfg.data_dir,
                               cache_dir=self.cfg.cache_dir,
                               pooling=self.cfg.model.pooling, num_cpus_per_run=0, progress=False)
                for i in idx:
                    k = str(self.settings[i].shots)
                    out[i] = {t.name: list(res["tasks"][t.name]["shots"][k]["values"])
                              for t in self.specs}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
