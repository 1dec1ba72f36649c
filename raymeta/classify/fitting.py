"""``raymeta fit``: from a file of labelled rows to a classifier directory.

1. Read and check the rows (:mod:`.labelled`), before any model loads or Ray starts.
2. The candidates: ``--method auto`` puts the plain encoder with SetFit first, then its prototype
   and ridge heads, then the same three on every ``--init``; a named method, that head on every
   init (the plain encoder when no ``--init`` is given).
3. Cross-validate them on the same folds, as Ray tasks (:mod:`.select`), and choose; calibrate the
   chosen one's temperature on its out-of-fold logits.
4. Refit the chosen candidate on all the rows, and write the directory atomically (a temporary
   sibling renamed into place): nothing is written when anything fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .heads import METHODS, FitSettings, fit_candidate
from .labelled import read_labelled
from .select import Candidate, CandidateScore, choose, cv_folds, fit_temperature, score_candidates

__all__ = ["FitResult", "fit", "base_model_of"]

log = logging.getLogger(__name__)
AUTO_HEADS = ("setfit", "prototype", "ridge")


@dataclass
class FitResult:
    path: Path
    chosen: Candidate
    scores: list[CandidateScore]
    temperature: float
    counts: dict[str, int]
    seconds: float

    def summary(self) -> str:
        """One line: what was chosen, and why."""
        if not self.scores:
            return f"fitted {self.chosen} on all rows"
        best = next(s for s in self.scores if s.candidate == self.chosen)
        if len(self.scores) == 1:
            return (f"fitted {self.chosen}: cross-validation accuracy {100 * best.mean:.1f} % "
                    f"(sd {100 * best.std:.1f} over {len(best.fold_accuracy)} folds)")
        first = self.scores[0]
        why = ("the plain encoder with SetFit, which no candidate beat"
               if best is first else f"{100 * (best.mean - first.mean):+.1f} points over "
               f"{first.candidate}")
        return (f"chose {self.chosen} by {len(best.fold_accuracy)}-fold cross-validation: "
                f"{100 * best.mean:.1f} % (sd {100 * best.std:.1f}), {why}")


def base_model_of(init: str) -> str | None:
    """The model a raymeta run (or its ``best/``, ``final/``) started from: its ``config.yaml``'s
    ``model.name_or_path``; None for anything else."""
    import yaml

    p = Path(init)
    for d in (p, p.parent):
        cfg = d / "config.yaml"
        if cfg.is_file():
            try:
                model = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("model", {})
            except yaml.YAMLError:
                return None
            return model.get("name_or_path") if isinstance(model, dict) else None
    return None


def _check_output(output: str, overwrite: bool) -> Path:
    out = Path(output).expanduser()
    if out.exists() and not overwrite:
        raise ConfigError(f"--output {output}: exists (give --overwrite to replace it)")
    return out


def _candidates(method: str, inits: Sequence[str], base: str) -> list[Candidate]:
    from ..eval.inits import resolve_init

    if method != "auto" and method not in METHODS:
        raise ConfigError(f"--method {method}: one of auto, {', '.join(METHODS)}")
    named = [(f"plain: {base}", resolve_init(base))] if method == "auto" or not inits else []
    named += [(i, resolve_init(i)) for i in inits]
    seen: set[str] = set()
    unique = []
    for name, path in named:  # the plain encoder given again as --init: once
        if path not in seen:
            seen.add(path)
            unique.append((name, path))
    heads = AUTO_HEADS if method == "auto" else (method,)
    return [Candidate(path, h, name) for name, path in unique for h in heads]


def fit(train: str, *, output: str, inits: Sequence[str] = (), base: str | None = None,
        method: str = "auto", text_column: str = "text", label_column: str = "label",
        label_names: dict[str, str] | None = None, settings: FitSettings | None = None,
        folds: int = 5, seed: int = 0, address: str | None = None,
        num_cpus_per_run: float = 1.0, overwrite: bool = False, export: Sequence[str] = (),
        progress: bool = True) -> FitResult:
    """Fit a classifier to the labelled rows of ``train`` and write it to ``output``
    (:class:`raymeta.classify.Classifier` loads it). See the module docstring for the steps."""
    import ray

    from ..cluster import connect
    from ..core.model import OFFLINE_MINILM
    from .card import classifier_card

    t0 = time.perf_counter()
    settings = settings or FitSettings()
    out = _check_output(output, overwrite)
    if folds < 2:
        raise ConfigError(f"--folds {folds}: at least 2")
    for fmt in export:
        if fmt != "onnx":
            raise ConfigError(f"--export {fmt}: onnx is the one export format")
        from .export import require_onnx

        require_onnx()
    data = read_labelled(train, text_column=text_column, label_column=label_column,
                         label_names=label_names)
    base = base or next((b for b in map(base_model_of, inits) if b), None) or OFFLINE_MINILM
    candidates = _candidates(method, inits, base)
    if "setfit" in {c.method for c in candidates}:
        from ..eval.setfit import require_setfit

        require_setfit()
    counts = data.counts
    print(f"raymeta fit: {len(data.texts)} rows, {len(counts)} classes (rows per class: "
          f"{min(counts.values())} to {max(counts.values())}); {len(candidates)} candidate"
          f"{'s' if len(candidates) > 1 else ''}", file=sys.stderr)
    splits = cv_folds(data.class_ids, max_folds=folds, seed=seed)
    started = connect(address)
    try:
        scores = score_candidates(candidates, data.texts, data.class_ids, data.labels,
                                  folds=splits, settings=settings, seed=seed,
                                  num_cpus=num_cpus_per_run, progress=progress)
    finally:
        if started:
            ray.shutdown()
    best = choose(scores)
    temperature = fit_temperature(best.oof_logits, data.class_ids)
    clf = fit_candidate(best.candidate.init, best.candidate.method, data.texts, data.class_ids,
                        data.labels, settings=settings, seed=seed)
    clf.temperature = temperature
    clf.info = {
        "chosen": {"init": best.candidate.name, "method": best.candidate.method},
        "requested": method, "folds": len(splits), "seed": seed,
        "selection": [s.as_dict() for s in scores],
        "train_rows_per_class": counts,
        "lineage": {"init": best.candidate.name, "base_model": base,
                    "raymeta_run": _run_of(best.candidate.init), "training_file": Path(
                        data.source).name},
    }
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        clf.save(tmp)
        if "onnx" in export:
            from .export import export_onnx

            export_onnx(clf, tmp)
        spec: dict[str, Any] = {"pooling": clf.pooling, "temperature": temperature, **clf.info,
                                "onnx": "onnx" in export}
        (tmp / "README.md").write_text(classifier_card(spec, counts=counts, source=data.source),
                                       encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FitResult(out, best.candidate, scores, temperature, counts, time.perf_counter() - t0)


def _run_of(init_path: str) -> str | None:
    """The raymeta run directory an init came from (its ``best/`` or ``final/``), by name."""
    p = Path(init_path)
    if (p.parent / "config.yaml").is_file():
        return f"{p.parent.name}/{p.name}"
    return None
