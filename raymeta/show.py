"""``raymeta tasks show``: what a task is, how its text tokenises, and one decoded episode."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from .config import EpisodeConfig, ModelConfig, TaskConfig
from .core.model import load_tokenizer
from .errors import DataError
from .storage import local_model_path
from .tasks import Task, load_task

__all__ = ["show_catalog", "show_tasks", "length_stats"]


def length_stats(task: Task, split: str) -> dict[str, float]:
    """Token lengths of a split (multiple choice: per choice)."""
    ids = task.features[split]["input_ids"]
    lens = [len(x) for row in ids
            for x in row] if task.config.type == "multiple_choice" else [len(x) for x in ids]
    if task.config.type == "extractive_qa":  # windows are padded to max_length: count real tokens
        lens = [int(sum(m)) for m in task.features[split]["attention_mask"]]
    a = np.asarray(lens)
    return {"mean": float(a.mean()), "p50": float(np.median(a)), "p95": float(np.percentile(a, 95)),
            "max": int(a.max())}


def _decode_rows(task: Task, rows: list[int], batch: dict,
                 classes: list[int] | None) -> list[tuple[str, str]]:
    tok = task.tokenizer
    out = []
    feats = task.features["train"].select(rows)
    for i, f in enumerate(feats):
        t = task.config.type
        if t == "sequence_classification":
            label = (task.labels[classes[int(batch["labels"][i])]] if classes
                     else str(int(batch["labels"][i])))
            # special tokens left out, except the mask: an SMLMT row shows where its word (the
            # label) was
            hide = set(tok.all_special_ids) - {tok.mask_token_id}
            out.append((label, tok.decode([x for x in f["input_ids"] if x not in hide])))
        elif t == "token_classification":
            assert task.labels is not None
            words = tok.convert_ids_to_tokens(f["input_ids"])
            tagged = [f"{w}/{task.labels[lab]}" if lab not in (-100, 0) else w
                      for w, lab in zip(words, f["labels"]) if w not in tok.all_special_tokens]
            out.append(("tokens", " ".join(tagged)))
        elif t == "extractive_qa":
            s, e = f["start_positions"], f["end_positions"]
            q = tok.decode(f["input_ids"], skip_special_tokens=True)
            out.append((f"answer: {tok.decode(f['input_ids'][s:e + 1])!r}", q[:160] + " ..."))
        else:
            lab = int(f["labels"])
            choice = tok.decode(f["input_ids"][lab], skip_special_tokens=True)
            out.append((f"right choice {lab} of {len(f['input_ids'])}", choice))
    return out


def show_tasks(
    specs: Sequence[TaskConfig], *, model: ModelConfig, data_dir: str, cache_dir: str, seed: int,
    episode: EpisodeConfig, console: Console | None = None,
) -> list[Task]:
    console = console or Console(width=120)
    tok = load_tokenizer(model, fetch=local_model_path)
    loaded = []
    for spec in specs:
        task = load_task(spec, tok, data_dir, cache_dir)
        loaded.append(task)
        src = spec.source
        where = {"hub": f"hub dataset {src.dataset}", "builtin": f"built-in {src.name}",
                 "smlmt": ("SMLMT (masked-word classes) over the text of "
                           + ", ".join(map(str, src.corpus)))}.get(
            src.kind, f"{src.format} files: " + ", ".join(f"{k}={v}" for k, v in src.files.items())
        ).replace("${data_dir}", data_dir)
        console.rule(f"[bold]{spec.name}[/bold]  ({spec.type})")
        console.print(f"[bold]source[/bold]  {where}")
        if spec.description:
            console.print(f"[bold]about[/bold]   {spec.description}")
        if task.labels is not None:
            shown = ", ".join(task.labels[:20]) + (f", ... ({len(task.labels)} in all)"
                                                   if len(task.labels) > 20 else "")
            console.print(f"[bold]labels[/bold]  {len(task.labels)}: {shown}")
        table = Table("split", "rows", "features", "truncated", "dropped", "tokens mean", "p50",
                      "p95", "max")
        for split in task.features:
            st = length_stats(task, split)
            c = task.counts.get(split, {})
            table.add_row(split, str(len(task.raw[split])), str(len(task.features[split])),
                          str(c.get("truncated", 0)), str(c.get("dropped", 0)),
                          f"{st['mean']:.1f}", f"{st['p50']:.0f}", f"{st['p95']:.0f}",
                          str(st["max"]))
        console.print(table)
        try:
            ep = task.episode(episode, seed=seed, step=0)
        except DataError as e:
            # its words exist only as episodes' classes: no episode, no task
            if spec.source.kind == "smlmt":
                raise
            # a labelled task may be a K-shot evaluation task, which need not fit meta-training's
            # episodes
            console.print(f"[bold]episode[/bold] none at ways={episode.ways} shots={episode.shots} "
                          f"queries={episode.queries}: {e} (enough for K-shot evaluation; not for "
                          "meta-training with these episodes)", highlight=False)
            continue
        ways = f"{len(ep.classes)}-way, " if ep.classes else ""
        console.print(f"[bold]episode[/bold] seed={seed} step=0: {ways}{len(ep.support_rows)} "
                      f"support, {len(ep.query_rows)} query; support set decoded:")
        for label, text in _decode_rows(task, ep.support_rows[:10], ep.support, ep.classes):
            console.print(f"  [cyan]{label}[/cyan]  {text[:200]}", highlight=False)
    return loaded


def show_catalog() -> None:
    """``raymeta tasks list``: the ready-made tasks as a table."""
    from .tasks.registry import catalog_names, task_config

    table = Table(title="ready-made tasks", show_lines=False)
    for col in ("name", "type", "source", "description"):
        table.add_column(col, overflow="fold")
    for name in catalog_names():
        t = task_config(name)
        src = t.source.name if t.source.kind == "builtin" else t.source.format or t.source.dataset
        src = "+".join(map(str, t.source.corpus)) if t.source.kind == "smlmt" else src
        table.add_row(name, t.type, f"{t.source.kind}:{src}", t.description)
    Console(width=max(120, Console().width)).print(table)
