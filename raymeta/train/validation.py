"""Meta-validation during meta-training, and the choice of ``<output_dir>/best``.

A meta-learner is meant to adapt well to *new* tasks, and its training loss does not say whether it
does: the encoder can fit its meta-training tasks while drifting away from what transfers (Murty et
al. 2021; Bansal et al. 2020 select on held-out tasks too). So the trainer scores the starting model
(step 0) and then every ``eval.validation.every_steps`` on validation tasks that are disjoint from
every meta-training task, and exports the best-scoring step, step 0 included: a run never hands back
an encoder that validates worse than the one it started from.

Two kinds of method, both the evaluation layer's own:
- ``prototype``, ``ridge``, ``svm``: the episodic score of :mod:`raymeta.eval.scoring` (seeded N-way K-shot
  episodes, over pooled embeddings of a fixed seeded subsample of rows, classified by the nearest prototype, Snell
  et al. 2017, with ``meta.proto.distance``, or by MetaOptNet's ridge or SVM head), the very scorer and protocol
  (:class:`~raymeta.config.EpisodicProtocol`) that ``raymeta tune`` ranks its trials by. It runs on the task actors,
  which already hold a replica of the model: each scores a share of the tasks, and imports only that light scorer.
- ``finetune``: K-shot fine-tuning (:func:`raymeta.eval.evaluate.evaluate`) of the exported step, as Ray tasks
  (imported when that method runs).

Several settings (``eval.validation.settings``, e.g. prototype at 1 and 5 shots and finetune at 8): every validated
step is scored at each, because a step can gain at one and lose at another (benchmarks/RESULTS.md §0, §10.3: a
general-purpose init gains at 1 shot and loses 0.5 to 1.9 points at 5), which a choice made at one setting never
sees. ``select`` says how ``best`` is chosen from them:

- ``mean``: the highest score, the mean of the settings' scores (with one setting, the rule as it always was);
- ``no_harm`` (the default with several settings): only a step that does no harm at any setting may become ``best``:
  at every setting, the 95% CI (:func:`~raymeta.eval.metrics.mean_ci95`, Student's t) of its paired gain over step 0
  must reach no lower than ``-tolerance``. Paired, because each setting scores the same seeded episodes (or K-shot
  splits) at every validation: the per-episode differences from step 0, pooled over the validation tasks, have a
  far smaller spread than two independent scores. Among the steps that qualify, the highest mean gain over step 0
  wins (the highest mean score: step 0's is fixed), and when none does, ``best`` stays step 0, the starting model.
  A step's qualification depends on it and step 0 only, so the choice is greedy, as with ``mean``.

Step 0's per-episode values are what every later step is paired with: they are kept by the :class:`Validator`, and
written beside ``best``'s score (``best/raymeta_step0.json``, in the same atomic export), so that ``--resume`` and an
actor-crash recovery pair later steps with the same values and choose the same ``best``.

The pure pieces (summaries, paired gains, the overlap check) need no Ray; the
:class:`Validator` that the trainer calls once per validation step does the Ray calls.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..config import EpisodicProtocol, ExperimentConfig, TaskConfig, ValidationSetting
from ..core.checkpoint import export_model
from ..core.jsonio import dumps as strict_dumps
from ..errors import ConfigError, DataError
from ..eval.metrics import mean_ci95
from ..eval.scoring import check_class_counts, setting_protocols
from ..runtime import get
from ..tasks.holdout import resolve_holdout
from ..tasks.registry import task_from_entry

__all__ = ["target_specs", "BEST_JSON", "STEP0_JSON", "Validator", "ValidationState", "check_validation_rows", "combine_settings",
           "paired_gain", "summarise_scores", "held_back", "validation_specs", "wants_best"]

log = logging.getLogger("raymeta.train")

BEST_JSON = "raymeta_best.json"  # beside the model in <output_dir>/best: which step, which score
# beside it (with eval.validation.settings or select: no_harm): step 0's per-episode (per-split) values per setting,
# which every later step's gain is paired with; read back on resume
STEP0_JSON = "raymeta_step0.json"


def wants_best(cfg: ExperimentConfig) -> bool:
    """Whether the run exports ``best``; asking for it without validation tasks is a config error."""
    if cfg.checkpoint.best and cfg.eval.validation is None:
        raise ConfigError("config key 'checkpoint.best': choosing the best step needs validation tasks "
                          "(eval.validation.tasks, or eval.validation.holdout_classes)")
    return cfg.eval.validation is not None and cfg.checkpoint.best is not False


def _files(spec: TaskConfig) -> set[str]:
    out: set[str] = set()
    for f in spec.source.files.values():
        out.update([f] if isinstance(f, str) else f)
    if spec.source.kind == "hub":
        out.add(f"hub:{spec.source.dataset}:{spec.source.config_name}")
    if spec.source.kind == "builtin":
        out.add(f"builtin:{spec.source.name}")
    return {x if x.startswith(("hub:", "builtin:")) or storage.is_uri(x) else str(Path(x).resolve()) for x in out}


def held_back(spec: TaskConfig, other: TaskConfig) -> bool:
    """Whether ``spec``'s test split holds rows that meta-training on ``other`` never reads: the same source, carved
    the same way, with a test split (meta-training samples train splits only)."""
    has_test = spec.source.test_fraction is not None or "test" in spec.source.files
    return has_test and spec.source == other.source and spec.include_labels == other.include_labels


def _overlap(spec: TaskConfig, other: TaskConfig) -> str | None:
    """Why ``spec`` and ``other`` share data (same name; or same files and classes that meet), else None."""
    if spec.name == other.name:
        return "same name"
    classes_meet = spec.include_labels is None or other.include_labels is None or \
        bool(set(map(str, spec.include_labels)) & set(map(str, other.include_labels)))
    return "same files and classes" if _files(spec) & _files(other) and classes_meet else None


def _held_out_specs(cfg: ExperimentConfig, entries: list[dict[str, Any]], key: str, what: str, must: str,
                    held_back_ok: bool = False) -> list[TaskConfig]:
    """``entries`` as checked task configs: classification, and disjoint from every meta-training task and every task
    the run evaluates on (``eval.tasks``, ``eval.episodic_tasks``): not the same name, and not the same files unless
    both keep disjoint classes, as ``huffpost_meta_{train,val,test}`` do. ``held_back_ok``: a meta-training task's
    held-back rows count as disjoint (``eval.validation.split: test``). One line naming ``key`` otherwise, ending in
    ``what`` (a wrong type) or ``must`` (an overlap)."""
    specs = [task_from_entry(e, data_dir=cfg.data_dir) for e in entries]
    tests = [task_from_entry(e, data_dir=cfg.data_dir) for e in [*cfg.eval.tasks, *cfg.eval.episodic_tasks]]
    for spec in specs:
        if spec.type != "sequence_classification":
            raise ConfigError(f"config key '{key}': task '{spec.name}' is {spec.type}; {what} classification tasks")
        for role, others in (("meta-training", cfg.tasks), ("evaluation (test)", tests)):
            for other in others:
                if role == "meta-training" and held_back_ok and held_back(spec, other):
                    continue  # in-domain selection on the rows that meta-training holds back
                why = _overlap(spec, other)
                if why:
                    hint = " (or its held-back rows: eval.validation.split=test)" \
                        if key == "eval.validation.tasks" and role == "meta-training" and not held_back_ok else ""
                    raise ConfigError(f"config key '{key}': task '{spec.name}' overlaps the {role} task "
                                      f"'{other.name}' ({why}); {must}{hint}")
    return specs


def validation_specs(cfg: ExperimentConfig) -> list[TaskConfig]:
    """The validation tasks, checked (:func:`_held_out_specs`): a choice made on a test task would make its test
    score optimistic. With ``eval.validation.holdout_classes``, the held-out tasks that :func:`~raymeta.tasks.holdout.
    resolve_holdout` carves out of the meta-training tasks (checked against the tasks as the run trains them)."""
    cfg = resolve_holdout(cfg)[0]
    v = cfg.eval.validation
    assert v is not None
    return _held_out_specs(cfg, v.tasks, "eval.validation.tasks", "validation scores",
                           "validation must be on tasks the run never trains or tests on", held_back_ok=v.split == "test")


def target_specs(cfg: ExperimentConfig) -> list[TaskConfig]:
    """``meta.weighting.rule: alignment``'s target tasks (``meta.weighting.target``, else ``eval.validation.tasks``),
    checked by the rule validation tasks follow (:func:`_held_out_specs`), and its floor against the tasks. One line
    naming the key and the task otherwise, before any actor starts."""
    w, key = cfg.meta.weighting, "meta.weighting.target"
    entries = w.target if w.target is not None else cfg.eval.validation.tasks if cfg.eval.validation else None
    if not entries:
        raise ConfigError(f"config key '{key}': meta.weighting.rule alignment needs target tasks: list them there, "
                          "or give eval.validation.tasks (the default target)")
    specs = _held_out_specs(cfg, entries, key, "target tasks are",
                            "target tasks must be ones the run never trains or tests on")
    n = sum(1 for t in cfg.tasks if t.weight > 0)
    if w.floor > 1.0 / n:
        raise ConfigError(f"config key 'meta.weighting.floor': {w.floor} is outside [0, 1/N] = [0, {1.0 / n:.6g}] "
                          f"for the {n} meta-training tasks")
    return specs


def check_validation_rows(cfg: ExperimentConfig, specs: list[TaskConfig]) -> None:
    """Whether every validation task can supply every setting, before Ray starts: :func:`~raymeta.eval.scoring.
    choose_rows`' rule (``ways`` classes with ``shots + queries`` of the at most ``max_rows_per_class`` rows embedded
    per class) for an episodic setting, :func:`~raymeta.eval.evaluate.kshot_splits`' (K training rows in every class,
    and a test split) for a finetune one. It counts the raw rows (no tokenizer, no model; datasets' cache holds them
    after ``raymeta train``'s own check of the rows): a classification task keeps every row when it is tokenised, so
    these are the counts the actors see. A one-line :class:`~raymeta.errors.DataError` naming the task, the setting
    and its config key otherwise."""
    from ..tasks import load_raw

    v = cfg.eval.validation
    assert v is not None
    settings, protocols, names = v.resolved_settings(), setting_protocols(cfg), v.setting_names()
    for spec in specs:
        raw = load_raw(spec, cfg.data_dir, cfg.cache_dir)
        if any("label" not in ds.column_names for ds in raw.values()):
            continue  # a missing column: the task's own load says which, in one line
        keep = None if spec.include_labels is None else set(map(str, spec.include_labels))
        counts = {split: Counter(str(x) for x in ds["label"] if keep is None or str(x) in keep) for split, ds in raw.items()}
        for i, (s, p, name) in enumerate(zip(settings, protocols, names)):
            key = "eval.validation" if v.settings is None else f"eval.validation.settings[{i}]"
            if p is not None:
                if p.split == "test" and "test" not in counts:
                    raise DataError(spec.name, f"{p.split_key}=test needs a test split (source.test_fraction or a test file)")
                chosen: Counter[str] = Counter()
                for split in sorted(["test"] if p.split == "test" else counts):  # as subsample_per_class caps them
                    for c, n in counts[split].items():
                        chosen[c] = min(p.max_rows_per_class, chosen[c] + n)
                check_class_counts(spec.name, chosen, p)
                continue
            if "test" not in counts:
                raise DataError(spec.name, f"setting {name} ({key}): finetune validation scores a test split "
                                "(add one, or set source.test_fraction)")
            classes = [str(c) for c in spec.labels or spec.include_labels or counts["train"]]
            short = [c for c in classes if counts["train"][c] < (s.shots or 0)]
            if short:
                raise DataError(spec.name, f"setting {name} ({key}.shots): K={s.shots} but class '{short[0]}' has only "
                                f"{counts['train'][short[0]]} training rows")


def summarise_scores(per_task: dict[str, list[float]]) -> dict[str, Any]:
    """The score is the mean over tasks of each task's mean; the CI is over the pooled values
    (:func:`raymeta.eval.metrics.mean_ci95`, Student's t)."""
    means = {k: float(np.mean(v)) for k, v in per_task.items()}
    pooled = mean_ci95([x for v in per_task.values() for x in v])
    return {"score": float(np.mean(list(means.values()))), "ci95": pooled["ci95"], "tasks": means, "n": pooled["n"]}


def combine_settings(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The step's score over several settings: the mean of the settings' scores (and of each task's means). Its
    ``ci95`` is the mean of theirs, an upper bound on the CI of that mean (the settings score the same encoder on the
    same tasks, so they are correlated, and the spread of a mean is at most the mean of the spreads). One
    setting: its own summary."""
    if len(summaries) == 1:
        return summaries[0]
    tasks = list(summaries[0]["tasks"])
    return {"score": float(np.mean([s["score"] for s in summaries])), "ci95": float(np.mean([s["ci95"] for s in summaries])),
            "tasks": {t: float(np.mean([s["tasks"][t] for s in summaries])) for t in tasks},
            "n": int(sum(s["n"] for s in summaries))}


def paired_gain(values: dict[str, list[float]], reference: dict[str, list[float]], score: float,
                reference_score: float) -> dict[str, float]:
    """A setting's gain over step 0: ``score - reference_score`` (its score is the mean of the task means), and the
    95% CI half-width (:func:`~raymeta.eval.metrics.mean_ci95`, Student's t) of the per-episode (per-split)
    differences from step 0's values of the same episodes, pooled over the tasks (each task has as many, so their
    mean is that gain); ``gain_lower`` is the CI's lower bound (NaN from a single value)."""
    diffs: list[float] = []
    for task, ref in reference.items():
        now = values[task]
        if len(now) != len(ref):
            raise ValueError(f"paired_gain: task '{task}' has {len(now)} values, step 0 had {len(ref)}")
        diffs += [a - b for a, b in zip(now, ref)]
    ci = mean_ci95(diffs)["ci95"]
    gain = score - reference_score
    return {"gain": gain, "gain_ci95": ci, "gain_lower": gain - ci}


@dataclass
class ValidationState:
    """The best step so far and how many validations since; read back from ``best`` on resume. ``rows``: per
    validated step (of this run, earlier ones read back from metrics.jsonl on resume), what the summary table shows."""

    best_score: float = -math.inf
    best_step: int | None = None
    since_best: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


class Validator:
    """Scores the trainer's current parameters on the validation tasks at each setting, on Ray; keeps the best."""

    def __init__(self, cfg: ExperimentConfig, out: Path):
        self.cfg, self.v = cfg, cfg.eval.validation
        assert self.v is not None
        self.specs = validation_specs(cfg)
        self.settings: list[ValidationSetting] = self.v.resolved_settings()
        self.names: list[str] = self.v.setting_names()
        self.protocols: list[EpisodicProtocol | None] = setting_protocols(cfg)  # None: finetune
        self.select, self.tolerance = self.v.selection, self.v.tolerance
        # the records carry each setting's score and gain (without settings and no_harm: the records as they were)
        self.detailed = self.v.settings is not None or self.select == "no_harm"
        check_validation_rows(cfg, self.specs)  # before Ray starts: the trainer builds its Validator first
        self.out = out
        self.best_dir = out / "best"
        self.export_best = wants_best(cfg)
        self.state = ValidationState()
        self.reference: list[dict[str, list[float]]] | None = None  # step 0's values per setting
        self.reference_scores: list[float] | None = None
        self._last: dict[str, Any] | None = None  # the last validation's per-setting detail (best_files)
        self._warned = False

    def due(self, step: int, last: int) -> bool:
        """Validate at step 0 (the starting model), every ``every_steps``, and at the last step."""
        assert self.v is not None
        return step == 0 or step % self.v.every_steps == 0 or step == last

    def _fingerprint(self) -> dict[str, Any]:
        """What step 0's values depend on, besides the parameters: the tasks, and each setting's protocol (or
        fine-tuning settings). A resume pairs with stored values only when it is unchanged."""
        e = self.cfg.eval
        finetune = {"seed": self.cfg.seed, "steps": e.finetune_steps, "lr": e.finetune_lr, "head_lr": e.head_lr,
                    "batch_size": e.batch_size, "max_test": e.max_test_examples, "pooling": self.cfg.model.pooling}
        return {"tasks": [s.name for s in self.specs],
                "settings": [{"name": n, **s.model_dump(),
                              **(json.loads(p.model_dump_json(exclude={"key", "split_key"})) if p is not None else finetune)}
                             for n, s, p in zip(self.names, self.settings, self.protocols)]}

    def resume(self, step: int) -> None:
        """Before the validation at ``step`` runs again after a resume or a recovery: the best so far from
        ``best/raymeta_best.json``, and how many validations came after it (those strictly between). A best
        from ``step`` on belongs to the timeline being replayed and is forgotten: the replay finds it again.
        Step 0's values (what gains are paired with) are kept from this process or read from ``best/raymeta_step0.json``
        (step 0 is the same in every timeline); the summary table's rows of the steps before ``step`` come back from
        metrics.jsonl."""
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
            self.state.since_best = (step - 1) // self.v.every_steps - rec["step"] // self.v.every_steps

    def _read_reference(self) -> None:
        f = self.best_dir / STEP0_JSON
        if not f.is_file():
            return
        ref = json.loads(f.read_text())
        if ref.get("fingerprint") != json.loads(strict_dumps(self._fingerprint())):
            log.warning("validation: %s was written for other validation tasks or settings; the gains over step 0 "
                        "after this resume are unknown (and under select: no_harm no later step can become best)", f)
            return
        self.reference, self.reference_scores = ref["values"], [float(x) for x in ref["scores"]]

    def __call__(self, trainer: Any, step: int) -> dict[str, Any]:
        """Score the trainer's parameters after ``step`` meta-steps at every setting. Returns the validation record,
        with ``improved`` (export ``best`` now) and ``stop`` (early stopping: no new best for ``patience``
        validations)."""
        t0 = time.perf_counter()
        return self.judge(step, self._score(trainer, step), t0)

    def judge(self, step: int, values: list[dict[str, list[float]]], t0: float | None = None) -> dict[str, Any]:
        """The record of ``step`` from each setting's per-task values (per episode, or per split for finetune),
        and the choice of ``best`` (:attr:`select`): step 0's values become the reference that every later step's
        gains are paired with. No Ray: what :meth:`__call__` does once the values are scored."""
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
                     for v, r, s, rs in zip(values, self.reference, summaries, self.reference_scores)]
        elif step > 0 and self.detailed and not self._warned:
            self._warned = True
            log.warning("validation at step %d: step 0's values are not known (checkpoint.best: false, or changed "
                        "validation settings, and a resume): no gains over step 0 from here on", step)
        # step 0 is the reference itself; a step whose gains are unknown cannot show that it does no harm
        qualifies = step == 0 or (gains is not None and all(g["gain_lower"] >= -self.tolerance for g in gains))
        st = self.state
        improved = summary["score"] > st.best_score and (qualifies or self.select == "mean")
        if improved:
            st.best_score, st.best_step, st.since_best = summary["score"], step, 0
        else:
            st.since_best += 1
        # the files carry gains only where they always can (detailed: step 0's values are persisted for a resume),
        # so that a resumed run writes what an uninterrupted one does; the summary table shows them either way
        settings = {n: {**s, **(g if g is not None and self.detailed else {})}
                    for n, s, g in zip(self.names, summaries, gains or [None] * len(summaries))}
        mean_gain = float(np.mean([g["gain"] for g in gains])) if gains is not None else None
        self._last = {"step": step, "settings": settings, "qualifies": qualifies, "gain": mean_gain}
        patience = self.v.early_stopping.patience if self.v.early_stopping else None
        method = self.v.method if self.v.settings is None else "+".join(dict.fromkeys(s.method for s in self.settings))
        record = {"step": step, "kind": "validation", "method": method, **summary}
        if self.detailed:
            record.update({"select": self.select, "settings": settings, "qualifies": qualifies,
                           **({"gain": mean_gain} if mean_gain is not None else {})})
        record.update({"seconds": time.perf_counter() - t0, "best_step": st.best_step, "best_score": st.best_score,
                       "improved": improved, "stop": patience is not None and st.since_best >= patience})
        st.history.append(record)
        st.rows.append({"step": step, "score": summary["score"], "qualifies": qualifies if step == 0 or gains else None,
                        "gains": None if gains is None else {n: (g["gain"], g["gain_ci95"]) for n, g in zip(self.names, gains)},
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
        ``raymeta_best.json`` (the step, its score, the selection rule and each setting's score and gain over step 0,
        with its 95% CI) and, when gains are recorded, ``raymeta_step0.json`` (step 0's values, for a resume)."""
        assert self.v is not None and self._last is not None and self._last["step"] == record["step"]
        best = {k: record[k] for k in ("step", "score", "ci95", "tasks", "n", "method")}
        best.update({"select": self.select, "tolerance": self.tolerance, "settings": self._last["settings"]})
        if self.detailed:
            best.update({"qualifies": self._last["qualifies"],
                         **({"gain": self._last["gain"]} if self._last["gain"] is not None else {})})
        files = {BEST_JSON: strict_dumps({**best, "validation": self.v.model_dump()}, indent=1)}
        if self.detailed and self.reference is not None and self.reference_scores is not None:
            files[STEP0_JSON] = strict_dumps({"fingerprint": self._fingerprint(), "scores": self.reference_scores,
                                              "values": self.reference})
        return files

    def table(self) -> list[str]:
        """The summary table, one line per validated step: each setting's gain over step 0 with its 95% CI, whether
        the step qualifies under no_harm (every lower bound >= -tolerance), and the chosen step marked."""
        width = max(18, *(len(n) for n in self.names))
        head = f"{'step':>6}  " + "  ".join(f"{n:<{width}}" for n in self.names) + "  qualifies"
        lines = [f"validation by setting (select: {self.select}, tolerance {self.tolerance:g}; gain over step 0 "
                 "± 95% CI, paired):", head]
        def num(x: Any, spec: str) -> str:
            return "n/a" if x is None or not math.isfinite(x) else format(x, spec)

        for row in self.state.rows:
            scores, gains = row["scores"], row["gains"] or {}
            if row["step"] == 0:
                cells = [f"{num(scores.get(n), '.4f')} (step 0)" for n in self.names]
            elif not all(n in gains for n in self.names):
                cells = [f"{num(scores.get(n), '.4f')} (no gain)" for n in self.names]
            else:
                cells = [f"{num(g, '+.4f')} ± {num(ci, '.4f')}" for g, ci in (gains[n] for n in self.names)]
            q = "-" if row["qualifies"] is None else "yes" if row["qualifies"] else "no"
            mark = "  <- best" if row["step"] == self.state.best_step else ""
            lines.append((f"{row['step']:>6}  " + "  ".join(f"{c:<{width}}" for c in cells) + f"  {q:<9}{mark}").rstrip())
        return lines

    def _score(self, trainer: Any, step: int) -> list[dict[str, list[float]]]:
        """Each setting's per-task values: the episodic settings in one round on the task actors, the finetune ones
        as Ray tasks."""
        out: list[dict[str, list[float]] | None] = [None] * len(self.settings)
        episodic = [i for i, p in enumerate(self.protocols) if p is not None]
        if episodic:
            for i, vals in zip(episodic, self._episodic(trainer, episodic)):
                out[i] = vals
        finetune = [i for i, p in enumerate(self.protocols) if p is None]
        if finetune:
            for i, vals in self._finetune(trainer, step, finetune).items():
                out[i] = vals
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    def _episodic(self, trainer: Any, which: list[int]) -> list[dict[str, list[float]]]:
        """Round-robin over the task actors: each loads the published parameters (driver mode) or uses its own
        (collective mode: they are the current ones) and scores its share of the validation tasks at the settings
        ``which``."""
        import ray

        actors = list(trainer.actors.values())
        shared = None if trainer.collective else ray.put(trainer.flat.numpy())
        protocols = [self.protocols[i].model_dump_json() for i in which]  # type: ignore[union-attr]
        jobs: dict[int, list[str]] = {}
        for i, spec in enumerate(self.specs):
            jobs.setdefault(i % len(actors), []).append(spec.model_dump_json())
        results = get([actors[i].validate.remote(shared, specs, protocols) for i, specs in jobs.items()])
        del shared
        out: list[dict[str, list[float]]] = [{} for _ in which]
        for r in results:
            for mine, theirs in zip(out, r):
                mine.update(theirs)
        return [{s.name: o[s.name] for s in self.specs} for o in out]  # in the configured order

    def _finetune(self, trainer: Any, step: int, which: list[int]) -> dict[int, dict[str, list[float]]]:
        """K-shot fine-tuning of the step's exported encoder at the settings ``which``, as Ray tasks that reserve no
        CPU: the actors hold the reservations, and they are idle while the validation runs. One export; one
        evaluation per number of splits (a K's splits and runs are seeded by K and split alone, so they do not depend
        on which other K are scored with it)."""
        from ..eval.evaluate import evaluate  # the fine-tuning stack: only for this method, never on the actors
        from ..eval.finetune import FinetuneSettings

        assert self.v is not None
        e = self.cfg.eval
        tmp = trainer.out / ".validation" / f"step-{step:08d}"
        by_splits: dict[int, list[int]] = {}
        for i in which:
            by_splits.setdefault(int(self.settings[i].splits or 1), []).append(i)
        out: dict[int, dict[str, list[float]]] = {}
        try:
            export_model(tmp, trainer.encoder, trainer.tokenizer)
            settings = FinetuneSettings(steps=e.finetune_steps, lr=e.finetune_lr, head_lr=e.head_lr, batch_size=e.batch_size,
                                        max_test=e.max_test_examples)
            for splits, idx in by_splits.items():
                shots = list(dict.fromkeys(int(self.settings[i].shots or 1) for i in idx))
                res = evaluate(str(tmp), self.specs, shots=shots, n_splits=splits, settings=settings,
                               seed=self.cfg.seed, data_dir=self.cfg.data_dir, cache_dir=self.cfg.cache_dir,
                               pooling=self.cfg.model.pooling, num_cpus_per_run=0, progress=False)
                for i in idx:
                    k = str(self.settings[i].shots)
                    out[i] = {s.name: list(res["tasks"][s.name]["shots"][k]["values"]) for s in self.specs}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
