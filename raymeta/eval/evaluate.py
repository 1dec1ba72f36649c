"""``raymeta evaluate``: few-shot evaluation on held-out tasks, with honest confidence intervals.

For every task, K and split, the init learns from K examples per class (classification)
or K examples (NER, QA, multiple choice) and is scored on the test split, by one or more methods:

- ``finetune`` (the default): encoder + a new head fine-tuned for a fixed step budget
  (:mod:`raymeta.eval.finetune`);
- ``prototype``, ``ridge``, ``svm``: no training, a classifier fitted to the K examples' embeddings:
  the nearest class mean (Snell et al. 2017), ridge regression or the multi-class SVM (MetaOptNet's
  heads, Lee et al. 2019;
  :mod:`raymeta.eval.frozen`), classification only;
- ``setfit``: SetFit, contrastive fine-tuning + a logistic-regression head (Tunstall et al. 2022;
  :mod:`raymeta.eval.setfit`, the optional ``setfit`` extra), classification only;
- ``fastfit``: FastFit, batch-contrastive training against the label names (Yehudai and Bandel
  2024; :mod:`raymeta.eval.fastfit`, the optional ``fastfit`` extra), classification only.

The K-shot splits are drawn from ``(seed, task, K, split)`` and saved in the results, so every
init and every method sees exactly the same examples, and is scored on the same test rows. Several
inits at once (:func:`evaluate_inits`, ``--init A --init B``) go out in one round of runs, and each
later init is paired with the first, split by split (:mod:`raymeta.eval.compare`).
Runs go out as parallel Ray tasks: one per (task, K, split) for ``finetune``, ``setfit`` and
``fastfit``, one per task for the embedding classifiers (each embeds the test rows once for all of
its splits).

Results: ``tasks[name]["shots"][K]`` holds ``finetune``'s scores, as it always has; every other
method's go to ``tasks[name]["methods"][method][K]``, with the same fields (``all``: every metric
per split; ``values``, ``mean``, ``std``, ``ci95``, ``n``: the task's primary metric,
:func:`summarise`). Many-class data sets also get episodic N-way K-shot evaluation
(:mod:`raymeta.eval.episodic`).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .. import storage
from ..config import (
    EMBEDDING_CLASSIFIERS,
    EVAL_METHODS,
    ModelConfig,
    RidgeConfig,
    SvmConfig,
    TaskConfig,
)

# strict JSON: NaN/inf -> null, listed under "nonfinite"
from ..core.jsonio import write_json_atomic
from ..errors import DataError, RaymetaError
from ..tasks import Task, load_task
from ..tasks.registry import catalog_names, task_config
from .fastfit import FastfitSettings, check_fastfit_task, fastfit_and_evaluate, require_fastfit
from .finetune import FinetuneSettings, finetune_and_evaluate
from .frozen import check_frozen_task, frozen_evaluate
from .inits import resolve_init
from .metrics import PRIMARY, mean_ci95
from .setfit import SetfitSettings, check_setfit_task, require_setfit, setfit_and_evaluate

__all__ = ["resolve_init", "resolve_eval_task", "kshot_splits", "summarise", "check_methods",
           "check_label_prior",
           "evaluate", "evaluate_episodic", "evaluate_inits", "evaluate_episodic_inits",
           "NAMES_SUFFIX"]

# A classifier scored with the label-name prior is reported under its own name ("prototype+names"):
# the label-name track, kept apart from the no-name track so that comparisons with the literature
# stay honest.
NAMES_SUFFIX = "+names"

log = logging.getLogger("raymeta.evaluate")


def resolve_eval_task(spec: str) -> TaskConfig:
    """A ready-made task name, a task YAML file, or a directory with train.jsonl + test.jsonl (text,
    label)."""
    p = Path(spec)
    if p.is_dir():
        missing = [f for f in ("train.jsonl", "test.jsonl") if not (p / f).is_file()]
        if missing:
            raise DataError(p.name,
                            f"directory {p} needs train.jsonl and test.jsonl with 'text' and "
                            f"'label' (missing: {', '.join(missing)})")
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in p.resolve().name) or "task"
        return TaskConfig.model_validate({
            "name": name, "type": "sequence_classification", "description": f"jsonl directory {p}",
            "source": {"kind": "files", "format": "jsonl",
                       "files": {"train": str((p / "train.jsonl").resolve()),
                                 "test": str((p / "test.jsonl").resolve())}},
        })
    if spec in catalog_names() or p.suffix in (".yaml", ".yml"):
        return task_config(spec)
    raise DataError(spec, f"not a ready-made task ({', '.join(catalog_names())}), a task YAML "
                    "file, or a directory with train.jsonl and test.jsonl")


def kshot_splits(task: Task, k: int, n_splits: int, seed: int) -> list[list[int]]:
    """Seeded K-shot training sets: K rows per class (classification) or K rows (others). K = 0
    (zero-shot, label names alone) is one empty set: there is nothing to draw, so repeating it would
    fake a spread of zero."""
    if k == 0:
        return [[]]
    out = []
    class_ids = task.class_ids("train")
    n = len(task.features["train"])
    if class_ids is not None:
        counts = np.bincount(class_ids, minlength=task.num_labels)
        short = [i for i, c in enumerate(counts) if c < k]
        if short:
            assert task.labels is not None
            raise DataError(task.name,
                            f"K={k} but class '{task.labels[short[0]]}' has only "
                            f"{counts[short[0]]} training examples (lower --shots)")
    elif n < k:
        raise DataError(task.name, f"K={k} but the train split has only {n} examples")
    for split in range(n_splits):
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), k, split])
        if class_ids is None:
            rows = rng.choice(n, k, replace=False).tolist()
        else:
            rows = [int(r) for c in range(task.num_labels)
                    for r in rng.choice(np.flatnonzero(class_ids == c), k, replace=False)]
        out.append(sorted(rows))
    return out


# mean, std and the t-based 95% CI of a task's per-split scores (few splits: t, not 1.96)
summarise = mean_ci95


class SentenceMethod(NamedTuple):
    """A method that trains on a split's sentences: the check that its package is installed, and
    the check of a task (before it is loaded: None, and after)."""

    require: Callable[[], None]
    check: Callable[[TaskConfig, Task | None], None]


SENTENCE_METHODS = {"setfit": SentenceMethod(require_setfit, check_setfit_task),
                    "fastfit": SentenceMethod(require_fastfit, check_fastfit_task)}


def check_methods(tasks: Sequence[TaskConfig], method: str | Sequence[str]) -> list[str]:
    """The evaluation methods as a list, after the checks that need no model or data: known names,
    each once; the embedding classifiers, ``setfit`` and ``fastfit`` only on classification tasks;
    ``setfit`` and ``fastfit`` installed. One-line errors."""
    methods = [method] if isinstance(method, str) else list(method)
    if not methods or any(m not in EVAL_METHODS
                          for m in methods) or len(set(methods)) != len(methods):
        raise RaymetaError(f"--method {','.join(methods)}: expected one or more of "
                           f"{', '.join(EVAL_METHODS)}, each once")
    for m in methods:
        if m in SENTENCE_METHODS:
            SENTENCE_METHODS[m].require()
    for spec in tasks:
        for m in methods:
            if m in EMBEDDING_CLASSIFIERS:
                check_frozen_task(spec, m)
            elif m in SENTENCE_METHODS:
                SENTENCE_METHODS[m].check(spec, None)
    return methods


def check_label_prior(methods: Sequence[str], shots: Sequence[int], label_prior: float) -> None:
    """The label-name prior applies to the prototype classifier; K = 0 (no examples) needs it, and
    only the prototype classifier can run on names alone. One-line errors, before anything is
    read."""
    if label_prior < 0:
        raise RaymetaError(f"--label-prior must be at least 0, got {label_prior}")
    if label_prior > 0 and "prototype" not in methods:
        raise RaymetaError("--label-prior applies to --method prototype (the names are prototype "
                           "support points)")
    if 0 in shots:
        if label_prior <= 0:
            raise RaymetaError("--shots 0 (zero-shot) needs --label-prior WEIGHT (> 0): the label "
                               "names are the prototypes")
        if other := [m for m in methods if m != "prototype"]:
            raise RaymetaError(f"--shots 0 (zero-shot): --method {other[0]} needs examples; only "
                               "prototype runs on label names alone")


def _names_track(by_method: dict[str, Any], label_prior: float,
                 setfit_template: str | None = None) -> dict[str, Any]:
    """With the label prior, the prototype classifier's (and the episodic fine-tuned head's) results
    under ``<name>+names``; with a SetFit label template, SetFit's under ``setfit+names``."""
    named = ({"prototype", "finetuned_head"} if label_prior > 0 else set()) | (
        {"setfit"} if setfit_template else set())
    return {(m + NAMES_SUFFIX if m in named else m): v for m, v in by_method.items()}


def evaluate(
    init: str, tasks: Sequence[TaskConfig], *, shots: Sequence[int], n_splits: int,
             settings: FinetuneSettings,
    seed: int = 0, data_dir: str, cache_dir: str | None, output: str | Path | None = None,
             pooling: str | None = None,
    num_cpus_per_run: float = 1.0, progress: bool = True, method: str | Sequence[str] = "finetune",
    setfit: SetfitSettings | None = None, address: str | None = None,
             ridge: RidgeConfig | None = None, fastfit: FastfitSettings | None = None,
    svm: SvmConfig | None = None, label_prior: float = 0.0, label_template: str = "{name}",
    setfit_template: str | None = None,
) -> dict[str, Any]:
    """Score ``init`` with each of ``method`` (``finetune``, ``prototype``, ``ridge``, ``svm``,
    ``setfit``) on every (task, K, split), all on the same splits and test rows
    (``settings.max_test``); write ``output`` only when all succeed. ``ridge`` and ``svm``: those
    classifiers' settings (``eval.ridge``, ``eval.svm``). ``label_prior`` λ > 0: the prototype
    classifier takes each class's name (``label_template``) as a support point of weight λ, reported
    as ``prototype+names`` (K = 0: the names alone). ``setfit_template``: SetFit with templated
    label-name examples (``setfit.get_templated_dataset``), reported as ``setfit+names``. The runs
    are Ray tasks on the cluster at
    ``address`` (default: ``$RAY_ADDRESS``, else a local instance)."""
    out = _score_inits(
        [init], tasks, shots=shots, n_splits=n_splits, settings=settings, seed=seed,
        data_dir=data_dir, cache_dir=cache_dir, pooling=pooling, num_cpus_per_run=num_cpus_per_run,
        progress=progress, method=method, setfit=setfit, fastfit=fastfit, address=address,
        ridge=ridge, svm=svm,
        label_prior=label_prior, label_template=label_template,
        setfit_template=setfit_template)[init]
    if output is not None:
        write_json_atomic(output, out)
    return out


def evaluate_inits(inits: Sequence[str], tasks: Sequence[TaskConfig], *,
                   output: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate` for several inits at once, on the same splits and test rows, in one round of
    Ray tasks: :func:`raymeta.eval.compare.comparison`'s record (``inits``, ``baseline``: the first,
    ``results``: each init's own results, ``gains``: each later init's paired gain over the first);
    one init: :func:`evaluate`'s results. ``kwargs``: :func:`evaluate`'s. Every init is resolved
    and loaded before any run starts; inits whose tokenizers give a task different K-shot splits are
    refused (nothing to pair)."""
    from .compare import comparison

    if len(inits) == 1:
        return evaluate(inits[0], tasks, output=output, **kwargs)
    out = comparison(_score_inits(_distinct(inits), tasks, **kwargs))
    if output is not None:
        write_json_atomic(output, out)
    return out


def evaluate_episodic_inits(inits: Sequence[str], tasks: Sequence[TaskConfig], *,
                            output: str | Path | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_episodic` for several inits, on the same seeded episodes, as
    :func:`evaluate_inits`'s record (each later init's paired gain over the first, episode by
    episode); one init: :func:`evaluate_episodic`'s results. ``kwargs``:
    :func:`evaluate_episodic`'s. Every init is resolved before any is scored."""
    from .compare import comparison

    if len(inits) == 1:
        return evaluate_episodic(inits[0], tasks, output=output, **kwargs)
    inits = _distinct(inits)
    if kwargs.get("episodes", 1) < 1:
        raise RaymetaError("--episodes must be at least 1")
    check_label_prior(kwargs.get("methods", ("prototype",)), kwargs.get("shots", ()),
                      kwargs.get("label_prior", 0.0))
    quiet, log.disabled = log.disabled, True  # each says which model it scores once: when scored
    try:
        for init in inits:  # a typo in the last one: one line now, not after scoring the others
            resolve_init(init)
    finally:
        log.disabled = quiet
    out = comparison({init: evaluate_episodic(init, tasks, **kwargs) for init in inits})
    if output is not None:
        write_json_atomic(output, out)
    return out


def _distinct(inits: Sequence[str]) -> list[str]:
    if not inits:
        raise RaymetaError("--init: give at least one")
    if twice := next((i for n, i in enumerate(inits) if i in inits[:n]), None):
        raise RaymetaError(f"--init {twice}: given twice")
    return list(inits)


def run_memory(encoder: Any, method: str, spec: TaskConfig, task: Task, *,
               settings: FinetuneSettings, setfit: SetfitSettings,
               fastfit: FastfitSettings) -> int:
    """The bytes one ``method`` run of ``spec`` on this encoder declares to Ray
    (:func:`raymeta.cluster.memory.run_memory_bytes`): a batch of the method's own size, of the
    task's ``max_length`` tokens (FastFit's ``max_text_length``); FastFit's batch also encodes
    every class's name document (Yehudai and Bandel 2024)."""
    from ..cluster.memory import encoder_run_memory_bytes

    rows, length, trains = settings.eval_batch, spec.max_length, True
    if method == "finetune":
        rows = settings.batch_size
    elif method == "setfit":
        rows = 2 * setfit.batch_size  # a batch of pairs
    elif method == "fastfit":
        rows, length = fastfit.batch_size + task.num_labels, fastfit.max_text_length
    else:  # an embedding head: the encoder only embeds
        trains = False
    return encoder_run_memory_bytes(encoder, rows=rows, max_length=length, trains=trains)


def _score_inits(
    inits: Sequence[str], tasks: Sequence[TaskConfig], *, shots: Sequence[int], n_splits: int,
    settings: FinetuneSettings, seed: int = 0, data_dir: str, cache_dir: str | None,
    pooling: str | None = None, num_cpus_per_run: float = 1.0, progress: bool = True,
    method: str | Sequence[str] = "finetune", setfit: SetfitSettings | None = None,
    address: str | None = None, ridge: RidgeConfig | None = None, svm: SvmConfig | None = None,
    label_prior: float = 0.0, label_template: str = "{name}", setfit_template: str | None = None,
    fastfit: FastfitSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Init -> its :func:`evaluate` results; every init on the same splits, in one round of Ray
    tasks."""
    import ray

    from ..cluster import cluster_view, connect, gather, task_options
    from ..core.model import load_encoder, load_tokenizer

    methods = check_methods(tasks, method)  # before any model or data is read
    check_label_prior(methods, shots, label_prior)
    setfit = setfit or SetfitSettings()
    fastfit = fastfit or FastfitSettings()
    model_paths = {init: resolve_init(init) for init in inits}  # every --init, before any load
    plan: list[tuple[TaskConfig, int, int, list[int]]] = []
    splits: dict[str, dict[str, list[list[int]]]] = {}
    memory: dict[tuple[str, str, str], int] = {}  # (init, method, task) -> bytes a run declares
    for n, (init, model_path) in enumerate(model_paths.items()):
        # Fail fast, before any run is launched or any file written, if the init is not a loadable
        # model.
        tok = load_tokenizer(ModelConfig(name_or_path=model_path), fetch=storage.local_model_path)
        encoder = load_encoder(ModelConfig(name_or_path=model_path),
                               fetch=storage.local_model_path)
        for spec in tasks:
            # checks the rows: bad rows/labels fail here, not in a worker
            task = load_task(spec, tok, data_dir, cache_dir)
            for m in methods:
                memory[init, m, spec.name] = run_memory(encoder, m, spec, task, settings=settings,
                                                        setfit=setfit, fastfit=fastfit)
            if "test" not in task.features:
                raise DataError(spec.name,
                                "has no test split (add one, or set source.test_fraction)")
            for m in methods:
                if m in SENTENCE_METHODS:
                    SENTENCE_METHODS[m].check(spec, task)
            mine = {str(k): kshot_splits(task, k, n_splits, seed) for k in shots}
            if n == 0:
                splits[spec.name] = mine
                plan += [(spec, k, i, r) for k in shots for i, r in enumerate(mine[str(k)])]
            elif mine != splits[spec.name]:
                raise DataError(spec.name, f"--init {init} and --init {inits[0]} give it different "
                                "K-shot splits (their tokenizers make different rows): not "
                                "comparable; score them one at a time")
    started = connect(address)
    try:
        threads = max(1, int(num_cpus_per_run))
        common = {"data_dir": data_dir, "cache_dir": cache_dir, "pooling": pooling,
                  "threads": threads}
        options = task_options(
            memory, num_cpus_per_run, cluster_view(),
            lambda key: f"each {key[1]} run of task '{key[2]}' (--init {key[0]})",
            fix="give a node more memory, or the task a smaller max_length")

        def remote(fn: Callable[..., Any], init: str, m: str, task: str) -> Any:
            return ray.remote(**options[init, m, task])(fn)

        refs: list[Any] = []
        # per ref: its init, its method and the plan entries it scores, in order
        covers: list[tuple[str, str, list[int]]] = []
        for init, model_path in model_paths.items():
            for m in methods:
                if m == "finetune":
                    refs += [remote(finetune_and_evaluate, init, m, spec.name).remote(
                        model_path, spec.model_dump_json(), rows, settings=settings,
                        seed=seed * 1000 + i, **common) for spec, _, i, rows in plan]
                    covers += [(init, m, [j]) for j in range(len(plan))]
                elif m in SENTENCE_METHODS:  # setfit, fastfit: one run per split too
                    fn, own = ((setfit_and_evaluate, {"settings": setfit,
                                                      "label_template": setfit_template})
                               if m == "setfit" else (fastfit_and_evaluate, {"settings": fastfit}))
                    refs += [remote(fn, init, m, spec.name).remote(
                        model_path, spec.model_dump_json(), rows, seed=seed * 1000 + i,
                        max_test=settings.max_test, eval_batch=settings.eval_batch, **own,
                        **common) for spec, _, i, rows in plan]
                    covers += [(init, m, [j]) for j in range(len(plan))]
                # an embedding classifier: one run per task, which embeds the test rows once for
                # all of its splits
                else:
                    for spec in tasks:
                        mine = [j for j, p in enumerate(plan) if p[0].name == spec.name]
                        prior = {"label_prior": label_prior,
                                 "label_template": label_template} if m == "prototype" else {}
                        run = remote(frozen_evaluate, init, m, spec.name)
                        refs.append(run.remote(model_path, spec.model_dump_json(),
                                               [plan[j][3] for j in mine],
                                               max_test=settings.max_test,
                                               eval_batch=settings.eval_batch, method=m,
                                               ridge=ridge, svm=svm, **prior, **common))
                        covers.append((init, m, mine))
        desc = f"{'+'.join(methods)} {', '.join(Path(p).name for p in model_paths.values())}"
        results = gather(refs, progress, desc=desc)
    finally:
        if started:
            ray.shutdown()
    outs: dict[str, dict[str, Any]] = {}
    for init, model_path in model_paths.items():
        out: dict[str, Any] = {"init": init, "model_path": model_path, "seed": seed,
                               "methods": methods, "settings": settings.__dict__, "tasks": {},
                               "splits": splits}
        if "setfit" in methods:
            out["setfit_settings"] = {**setfit.__dict__, "label_template": setfit_template}
        if "fastfit" in methods:
            out["fastfit_settings"] = dict(fastfit.__dict__)
        if label_prior > 0:
            out["label_prior"] = {"weight": label_prior, "template": label_template}
        for spec in tasks:
            entry = out["tasks"].setdefault(spec.name, {"type": spec.type,
                                                        "metric": PRIMARY[spec.type]})
            # finetune under "shots" (as ever), the others under "methods"; K in the order of
            # ``shots``
            for m in methods:
                by_k = (entry.setdefault("shots", {}) if m == "finetune"
                        else entry.setdefault("methods", {}).setdefault(m, {}))
                for k in shots:
                    by_k[str(k)] = {"all": {}}
        outs[init] = out
    for (init, m, entries), metrics in zip(covers, results):
        for j, values in zip(entries, metrics if m in EMBEDDING_CLASSIFIERS else [metrics]):
            spec, k, _, _ = plan[j]
            entry = outs[init]["tasks"][spec.name]
            res = entry["shots"][str(k)] if m == "finetune" else entry["methods"][m][str(k)]
            for name, v in values.items():
                res["all"].setdefault(name, []).append(v)
    for out in outs.values():
        for entry in out["tasks"].values():
            for by_k in [entry.get("shots", {}), *entry.get("methods", {}).values()]:
                for res in by_k.values():
                    res.update({"metric": entry["metric"],
                                **summarise(res["all"][entry["metric"]])})
            if "methods" in entry:
                entry["methods"] = _names_track(entry["methods"], label_prior, setfit_template)
    return outs


def evaluate_episodic(
    init: str, tasks: Sequence[TaskConfig], *, ways: int, shots: Sequence[int], queries: int,
                      episodes: int,
    head_steps: int, seed: int = 0, data_dir: str, cache_dir: str | None,
                      output: str | Path | None = None,
    methods: Sequence[str] = ("prototype",), ridge: RidgeConfig | None = None,
                      svm: SvmConfig | None = None,
    label_prior: float = 0.0, label_template: str = "{name}",
) -> dict[str, Any]:
    """N-way K-shot episodes on each task's classes: each embedding classifier of ``methods``
    (prototype, ridge, svm) and, with ``head_steps``, the fine-tuned head, on the same episodes; 95%
    CIs. ``label_prior`` λ > 0: the prototypes and the head's start take the class names as support
    points (``prototype+names``, ``finetuned_head+names``; K = 0: the names alone)."""
    from .episodic import evaluate_init_episodic

    if episodes < 1:
        raise RaymetaError("--episodes must be at least 1")
    check_label_prior(methods, shots, label_prior)
    model_path = resolve_init(init)
    out: dict[str, Any] = {"init": init, "model_path": model_path, "seed": seed, "tasks": {}}
    for spec in tasks:
        if spec.type != "sequence_classification":
            raise DataError(spec.name,
                            f"episodic evaluation needs classes; the task is {spec.type}")
        by_k = evaluate_init_episodic(model_path, spec, data_dir=data_dir, cache_dir=cache_dir,
                                      ways=ways,
                                      shots=tuple(shots), queries=queries, episodes=episodes,
                                      seed=seed,
                                      head_steps=head_steps, methods=methods, ridge=ridge, svm=svm,
                                      label_prior=label_prior, label_template=label_template)
        out["tasks"][spec.name] = {"type": spec.type, "metric": "accuracy", "episodic": {
            f"{ways}-way {k}-shot": _names_track({name: r.as_dict() for name, r in res.items()},
                                                 label_prior)
            for k, res in by_k.items()}}
    if label_prior > 0:
        out["label_prior"] = {"weight": label_prior, "template": label_template}
    if output is not None:
        write_json_atomic(output, out)
    return out
