"""Inits scored on the same K-shot splits or episodes, compared with a baseline init pair by pair.

Every init sees the same seeded splits (and test rows) and the same episodes, so an init's gain over
the baseline is the mean of its per-split (per-episode) differences, with the t-based 95% CI of that
mean (:func:`raymeta.eval.metrics.paired_ci95`): tighter than comparing two means with their own
CIs, since what the splits share cancels out. ``raymeta evaluate --init A --init B`` pairs every
init with the first (:func:`comparison`, :func:`paired_table`); ``raymeta benchmark`` pairs each run
with its baselines (:func:`gains`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .metrics import paired_ci95
from .report import percent_cell, result_columns

__all__ = ["gains", "significant", "gain_cell", "comparison", "paired_table", "evaluation_table",
           "write_evaluation_report", "SIGNIFICANT"]

#: what marks a gain whose 95% CI excludes 0 in :func:`paired_table`
SIGNIFICANT = "*"


def gains(results: dict[str, dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Per init, task and setting: the paired difference to ``baseline`` (mean and 95% CI; the
    per-split differences under ``values``). K-shot settings are ``K=8`` (fine-tuning) and ``K=8
    setfit`` (another method), episodic ones ``5-way 1-shot prototype``: each method against the
    same method on the baseline, split by split (episode by episode). Settings the baseline lacks
    are left out."""
    out: dict[str, Any] = {}
    base = results.get(baseline)
    if base is None:
        return out
    for init, res in results.items():
        if init == baseline:
            continue
        for task, entry in res["tasks"].items():
            b = base["tasks"].get(task)
            if b is None:
                continue
            base_cols = result_columns(b)
            for col, r in result_columns(entry).items():
                if col in base_cols:
                    out.setdefault(init, {}).setdefault(task, {})[col] = paired_ci95(
                        r["values"], base_cols[col]["values"])
    return out


def significant(gain: dict[str, Any]) -> bool:
    """Whether a paired gain's 95% CI excludes 0 (never where the CI is undefined: one split)."""
    ci = gain.get("ci95")
    return ci is not None and ci == ci and abs(gain["mean"]) > ci


def gain_cell(gain: dict[str, Any] | None) -> str:
    """A paired gain as a table cell: signed points ± the 95% CI, ``*`` where the CI excludes 0."""
    if gain is None:
        return "—"
    txt = percent_cell(gain["mean"], gain.get("ci95"), signed=True)
    return f"{txt} {SIGNIFICANT}" if significant(gain) else txt


def comparison(by_init: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Several inits' results (``raymeta evaluate``'s, each scored on the same splits or episodes)
    as one record: the inits in order, the first as the baseline, every init's own results, and
    each later init's paired gains over the first (:func:`gains`)."""
    inits = list(by_init)
    if not inits:
        raise ValueError("comparison: no results")
    return {"inits": inits, "baseline": inits[0], "results": by_init,
            "gains": gains(by_init, inits[0])}


def paired_table(by_init: dict[str, dict[str, Any]], gain: dict[str, Any] | None = None,
                 baseline: str | None = None) -> str:
    """One Markdown table for every task and setting: a row per (task, setting), each init's mean ±
    95% CI (in %), then each later init's paired gain over ``baseline`` (points, ± the paired 95%
    CI, ``*`` where it excludes 0). ``gain``: :func:`gains` (default: computed here, with the first
    init as the baseline)."""
    inits: Sequence[str] = list(by_init)
    baseline = baseline or inits[0]
    if gain is None:
        gain = gains(by_init, baseline)
    others = [i for i in inits if i != baseline]
    rows: dict[tuple[str, str], None] = {}  # (task, setting), in first-seen order
    metrics: dict[str, str] = {}
    for res in by_init.values():
        for task, entry in res["tasks"].items():
            metrics.setdefault(task, entry.get("metric", "score"))
            rows.update({(task, col): None for col in result_columns(entry)})
    head = [f"mean ± 95% CI, in %; gain: the paired difference to {baseline} over the same splits "
            f"or episodes, in points, ± its 95% CI; {SIGNIFICANT} where the CI excludes 0"
            if others else "mean ± 95% CI, in %", ""]
    cols = ["task", "setting", *inits, *(f"gain: {i}" for i in others)]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---|" * (len(cols) - 1)]
    for task, col in rows:
        cells = [f"{task} ({metrics[task]})", col]
        for init in inits:
            r = result_columns(by_init[init]["tasks"].get(task) or {}).get(col)
            cells.append("—" if r is None else percent_cell(r["mean"], r.get("ci95")))
        cells += [gain_cell(gain.get(i, {}).get(task, {}).get(col)) for i in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + lines) + "\n"


def evaluation_table(out: dict[str, Any]) -> str:
    """``raymeta evaluate``'s table (:func:`paired_table`) of ``out``: one init's results, or
    :func:`comparison`'s record of several."""
    if "results" in out:
        return paired_table(out["results"], out["gains"], out["baseline"])
    return paired_table({out["init"]: out})


def write_evaluation_report(out: dict[str, Any], output: str | Path) -> tuple[Path, Path | None]:
    """Beside ``output`` (the results file): its table as ``.md`` and the score of every init
    against K, with 95% CI bars, as ``.png`` (:func:`raymeta.eval.report.plot_against_k`; none
    where there is nothing to draw). Returns both paths."""
    from .report import plot_against_k

    output = Path(output)
    by_init = out.get("results") or {out["init"]: out}
    plot = plot_against_k(by_init, output.with_suffix(".png"))
    md = output.with_suffix(".md")
    md.write_text(f"# raymeta evaluate: {', '.join(by_init)}\n\n{evaluation_table(out)}\n"
                  + (f"\n![score against K]({plot.name})\n" if plot else ""), encoding="utf-8")
    return md, plot
