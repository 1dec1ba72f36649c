"""``raymeta adapt``: meta-pretrain an encoder on the user's own unlabelled text, steered and
checked by their few labels when they have them.

A composition of what exists, with no second training loop (``../shared/DESIGN.md``, "Adapt"):

- the unlabelled text becomes a self-supervised task, SMLMT over it (Bansal et al., EMNLP 2020:
  which word was masked?), that joins a general labelled mixture (the recipe's tasks,
  ``configs/recipes/adapt.yaml``). Bansal et al. 2020 and 2021 found SMLMT tasks over domain text
  to help few-shot classification in that domain; the objective stays at the sentence level
  (episodes over pooled embeddings), which AdaSent (Huang et al., EMNLP 2023) found to matter for a
  sentence encoder, where plain MLM disrupts its embedding training;
- with ``--labelled``, the user's rows are the alignment target of learned task weights
  (``meta.weighting.rule: alignment``, bounded by ``max_kl``), and ``best`` is chosen on them:
  seeded N-way K-shot prototype episodes drawn from the labelled rows (repeated stratified random
  splits, Monte Carlo cross-validation), under ``select: no_harm`` with step 0, the starting model,
  always a candidate; so adapt never returns a model that validates worse than the one it started
  from;
- without labels, ``best`` is chosen on the recipe's validation tasks, as ``raymeta train`` does;
- :class:`raymeta.train.trainer.MetaTrainer` runs it, on Ray, and writes what ``train`` writes.

Every bad input is one line (exit 2) before Ray starts: the files are read and the SMLMT words
counted on the driver first.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

__all__ = ["AdaptResult", "adapt", "adapt_config", "DEFAULT_RECIPE", "DOMAIN_TASK",
           "LABELLED_TASK"]

log = logging.getLogger("raymeta.adapt")

DEFAULT_RECIPE = "recipes/adapt"
DOMAIN_TASK = "domain"  # the SMLMT task over the user's text
LABELLED_TASK = "labelled"  # the user's rows: validation (and alignment target) task
# SMLMT over the user's text (Bansal et al. 2020's settings scaled to a few thousand sentences:
# a word must be in 10 sentences, 40 rows per word at most)
DOMAIN_SMLMT = {"vocab_size": 1000, "min_count": 10, "max_sentences_per_word": 40,
                "sentence_words": [4, 64]}
RECOMMENDED_SENTENCES = 1000  # below this, a warning: few distinct words reach min_count
DATA_DIR = "data"  # <output>/data: the inputs as read (parquet), which the run's tasks read


@dataclass
class AdaptResult:
    """What ``adapt`` did: the model directory to use (``best``), the step it is, and why."""

    output: str
    model: str  # <output>/best (or final without validation)
    step: int
    steps: int
    score: float | None
    step0_score: float | None
    gain: float | None
    gain_ci95: float | None
    chosen_on: str  # "the labelled rows" or the validation tasks
    sentences: int
    texts: int
    seconds: float

    def reason(self) -> str:
        """What was chosen, and why (no paths: the model card's line)."""
        if self.score is None:
            return f"the last of {self.steps} steps (no validation)"
        if self.step == 0:
            return (f"no step validated better than the starting model on {self.chosen_on} "
                    f"(score {self.score:.4f}), so adapt kept it")
        gain = (f" ({100 * self.gain:+.1f} ± {100 * (self.gain_ci95 or 0):.1f} points over "
                "step 0)" if self.gain is not None else "")
        return (f"step {self.step} of {self.steps} validated best on {self.chosen_on}: "
                f"{self.score:.4f}{gain}")

    def summary(self) -> str:
        """One line: what was chosen, and why, and where it is."""
        return f"adapt: {self.reason()}; {self.model} ({self.seconds / 60:.1f} min)"


# --------------------------------------------------------------------------- the inputs


def _sentences(texts: Sequence[str], lo: int, hi: int) -> int:
    from .tasks.smlmt import split_sentences

    seen: set[str] = set()
    for t in texts:
        seen.update(s for s in split_sentences(t) if lo <= len(s.split()) <= hi)
    return len(seen)


def check_smlmt_capacity(texts: Sequence[str], domain: dict[str, Any], ways: int,
                         need: int, what: str, source: str) -> int:
    """The sentences SMLMT gets from ``texts``, after checking that they make ``ways``-way
    episodes: ``ways`` words, each in at least ``min_count`` sentences and with ``need`` (shots +
    queries) rows; one line saying what was found and what is needed otherwise."""
    from collections import Counter

    from .config import check_task
    from .errors import DataError
    from .tasks.smlmt import build_rows

    task = check_task(domain, origin=what)
    src = task.source
    n = _sentences(texts, *src.sentence_words)
    try:
        rows = build_rows(task, [(t, source, i + 1) for i, t in enumerate(texts)])
        words = sum(c >= need for c in Counter(map(str, rows["label"])).values())
    except DataError:
        words = 0
    if words < ways:
        raise InputError(what, f"too little text for SMLMT: {n} distinct sentences of "
                         f"{src.sentence_words[0]}-{src.sentence_words[1]} words, in which {words} "
                         f"word(s) occur in at least {max(src.min_count, need)} sentences; a "
                         f"{ways}-way episode needs {ways} such words. Give more text (a few "
                         f"hundred sentences at the least, {RECOMMENDED_SENTENCES:,} or more is "
                         "better)", file=source)
    if n < RECOMMENDED_SENTENCES:
        log.warning("%s: %d distinct sentences; SMLMT over fewer than %d repeats few words",
                    what, n, RECOMMENDED_SENTENCES)
    return n


def _write_parquet(path: Path, columns: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(path)


def _files_task(name: str, file: str) -> dict[str, Any]:
    return {"name": name, "type": "sequence_classification",
            "source": {"kind": "files", "format": "parquet", "files": {"train": file}}}


def validation_sizes(counts: Sequence[int]) -> dict[str, int]:
    """Episodes over the labelled rows: every class up to 10 (N-way), K = half the smallest class
    (at most 4), the rest of it as queries (at most 10): each episode is a stratified split of the
    rows into a support and a query set."""
    smallest = min(counts)
    shots = max(1, min(4, smallest // 2))
    return {"ways": min(len(counts), 10), "shots": shots,
            "queries": max(1, min(10, smallest - shots))}


# --------------------------------------------------------------------------- the config


def adapt_config(output: str, unlabelled_file: str, *, labelled_file: str | None = None,
                 labelled_counts: Sequence[int] | None = None, init: str | None = None,
                 recipe: str = DEFAULT_RECIPE, general: Sequence[str] | None = None,
                 steps: int | None = None, align: bool = True,
                 overrides: Sequence[str] = ()) -> Any:
    """The experiment config of an adapt run: ``recipe`` with the domain SMLMT task added (over
    ``unlabelled_file``, a parquet file with a ``text`` column), ``general`` (ready-made task names)
    instead of the recipe's tasks when given, and with ``labelled_file`` the labelled rows as the
    validation task (``select: no_harm``) and, with ``align``, the alignment target. ``overrides``
    (``key=value``) come last."""
    from .config import load_config

    data = load_config(recipe).model_dump(mode="json")
    data["output_dir"] = output
    if init is not None:
        data["model"]["name_or_path"] = init
    if general is not None:
        data["tasks"] = [{"use": t} for t in general]
    names = {t.get("name") or t.get("use") for t in data["tasks"]}
    if DOMAIN_TASK in names:
        raise InputError("--general", f"a task is named '{DOMAIN_TASK}', adapt's name for the "
                         "SMLMT task over --unlabelled")
    data["tasks"].append({
        "name": DOMAIN_TASK, "type": "sequence_classification",
        "description": "SMLMT (Bansal et al. 2020) over the unlabelled text of raymeta adapt",
        "source": {"kind": "smlmt", "from": [{"source": {
            "kind": "files", "format": "parquet", "files": {"train": unlabelled_file}}}],
            **DOMAIN_SMLMT},
        "max_length": 64})
    if steps is not None:
        data["meta"]["steps"] = steps
    if labelled_file is not None:
        assert labelled_counts is not None
        task = _files_task(LABELLED_TASK, labelled_file)
        v = data["eval"].get("validation") or {}
        data["eval"]["validation"] = {
            **{k: v[k] for k in ("every_steps", "episodes", "early_stopping") if k in v},
            "tasks": [task], "method": "prototype", **validation_sizes(labelled_counts),
            "max_rows_per_class": max(2, max(labelled_counts)), "select": "no_harm"}
        if align:
            sizes = validation_sizes(labelled_counts)
            data["meta"]["weighting"] = {**data["meta"]["weighting"], "rule": "alignment",
                                         "target": [task], "shots": [sizes["shots"]]}
    return load_config(data=data, overrides=list(overrides))


# --------------------------------------------------------------------------- the run


def _validations(output: str) -> dict[int, dict[str, Any]]:
    """The run's validation records by step (the last one of a step), from metrics.jsonl."""
    path = Path(output) / "metrics.jsonl"
    if not path.is_file():
        return {}
    recs = (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip())
    return {r["step"]: r for r in recs if r.get("kind") == "validation"}


def _card_section(result: AdaptResult, unlabelled: str, labelled: str | None,
                  labelled_counts: dict[str, int] | None) -> str:
    lines = ["", "## Adapted to a domain (raymeta adapt)", "",
             f"- Unlabelled text: `{Path(unlabelled).name}`, {result.texts:,} texts, "
             f"{result.sentences:,} distinct sentences, as the SMLMT task `{DOMAIN_TASK}` "
             "(the text itself is not in this directory)."]
    if labelled is not None and labelled_counts is not None:
        lines.append(f"- Labelled rows: `{Path(labelled).name}`, {sum(labelled_counts.values())} "
                     f"rows in {len(labelled_counts)} classes: the alignment target of the task "
                     "weights, and the validation task that chose this step.")
    lines.append(f"- Chosen: {result.reason()}.")
    return "\n".join(lines) + "\n"


def adapt(unlabelled: str, *, output: str, labelled: str | None = None,
          text_column: str = "text", label_column: str = "label", init: str | None = None,
          recipe: str = DEFAULT_RECIPE, general: Sequence[str] | None = None,
          steps: int | None = None, align: bool = True, overrides: Sequence[str] = (),
          overwrite: bool = False, address: str | None = None) -> AdaptResult:
    """Meta-train on ``unlabelled`` text (a file, a directory, or a storage URI: txt, csv, tsv,
    jsonl, json, parquet) mixed with the recipe's general tasks, and return where the chosen model
    is. See the module docstring, and docs/adapt.md."""
    from . import storage
    from .classify.labelled import read_labelled, read_texts

    t0 = time.perf_counter()
    if storage.is_uri(output):
        raise InputError("--output", "adapt writes a local directory (its task data is read by "
                         "the actors from there); copy it to storage afterwards", file=output)
    texts, files = read_texts(unlabelled, text_column=text_column, what="--unlabelled")
    source = files[0] if len(files) == 1 else unlabelled
    rows = None
    if labelled is not None:
        rows = read_labelled(labelled, text_column=text_column, label_column=label_column,
                             what="--labelled")
    out = Path(output).expanduser().resolve()
    data = out / DATA_DIR
    cfg = adapt_config(str(out), str(data / "unlabelled.parquet"),
                       labelled_file=None if rows is None else str(data / "labelled.parquet"),
                       labelled_counts=None if rows is None else list(rows.counts.values()),
                       init=init, recipe=recipe, general=general, steps=steps, align=align,
                       overrides=[*overrides, *([f"resources.address={address}"]
                                                if address else [])])
    domain = next(t for t in cfg.tasks if t.name == DOMAIN_TASK)
    episode = domain.episode or cfg.meta.episode
    sentences = check_smlmt_capacity(
        texts, domain.model_dump(mode="json"), episode.ways or 2,
        episode.shots + episode.queries, "--unlabelled", source)

    from .tasks import check_tasks
    from .train.outputs import prepare_output_dir
    from .train.validation_tasks import run_specs

    prepare_output_dir(str(out), resume=False, overwrite=overwrite)
    _write_parquet(data / "unlabelled.parquet", {"text": texts})
    if rows is not None:
        _write_parquet(data / "labelled.parquet",
                       {"text": rows.texts, "label": [rows.raw_labels[i] for i in rows.class_ids]})
    check_tasks(run_specs(cfg), cfg.data_dir, cfg.cache_dir)
    log.info("adapt: %d texts (%d sentences) from %s, %d general task(s), %s", len(texts),
             sentences, source, len(cfg.tasks) - 1,
             f"best chosen on {labelled}" if rows is not None else "best chosen on "
             "the recipe's validation tasks")

    from .train.trainer import MetaTrainer
    from .train.validation import BEST_JSON

    final = MetaTrainer(cfg).run()
    best = out / "best"
    step, score = cfg.meta.steps, None
    model = str(final)
    if (best / BEST_JSON).is_file():
        chosen = json.loads((best / BEST_JSON).read_text())
        step, score, model = int(chosen["step"]), float(chosen["score"]), str(best)
    validated = _validations(str(out))
    rec0, rec = validated.get(0), validated.get(step)
    gain = ci = None
    if rec is not None and step > 0:
        s = next(iter((rec.get("settings") or {}).values()), {})
        gain, ci = s.get("gain"), s.get("gain_ci95")
    result = AdaptResult(
        output=str(out), model=model, step=step, steps=cfg.meta.steps, score=score,
        step0_score=None if rec0 is None else rec0.get("score"),
        gain=gain if gain is None or math.isfinite(gain) else None, gain_ci95=ci,
        chosen_on="the labelled rows" if rows is not None else "the validation tasks",
        sentences=sentences, texts=len(texts), seconds=time.perf_counter() - t0)
    section = _card_section(result, source, None if rows is None else rows.source,
                            None if rows is None else rows.counts)
    for d in {Path(model), out / "final"}:
        card = d / "README.md"
        if card.is_file():
            card.write_text(card.read_text() + section)
    return result
