"""Held-out families for ``raymeta adapt``: each family's rows split, seeded, into an unlabelled
pool (what ``adapt --unlabelled`` reads) and a labelled task (``train.jsonl``/``test.jsonl``, what
``raymeta evaluate --task`` draws its K-shot splits and test rows from), with no text in both;
``task_named.yaml`` is the same task with its classes' names (for ``--method fastfit``).

    python benchmarks/adapt_families.py --family ag_news --work /tmp/adapt_bench/ag_news
    raymeta adapt --unlabelled /tmp/adapt_bench/ag_news/pool.txt --output /tmp/adapt_bench/run
    raymeta evaluate --init offline:all-MiniLM-L6-v2 --init /tmp/adapt_bench/run/best \\
        --task /tmp/adapt_bench/ag_news/task --shots 8 --splits 5 --method setfit,prototype,ridge

The check that the pool and the task share no text (after whitespace and case folding) runs every
time the files are written; ``pool.json`` records the sizes and the seed.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def ag_news(data: Path) -> list[tuple[str, str]]:
    """(text, label) of AG News test.csv: the description, as the ready-made task reads it."""
    with open(data / "ag_news" / "test.csv", newline="", encoding="utf-8") as f:
        return [(row[2].replace("\\n", " ").strip(), row[0]) for row in csv.reader(f)]


FAMILIES = {"ag_news": ag_news}
# the classes' names (AG News's classes.txt), for the methods that read them (FastFit's label
# documents, the label-name track)
NAMES = {"ag_news": {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}}


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def split_family(rows: list[tuple[str, str]], pool: int, seed: int
                 ) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]:
    """The unlabelled pool, the task's train rows and its test rows (half each of the rest). A
    text that occurs more than once goes wholly to one side, so no text is in the pool and the
    task both."""
    by_text: dict[str, list[int]] = {}
    for i, (t, _) in enumerate(rows):
        by_text.setdefault(norm(t), []).append(i)
    keys = sorted(by_text)
    order = np.random.default_rng(seed).permutation(len(keys))
    pool_rows, rest = [], []
    for j in order:
        (pool_rows if len(pool_rows) < pool else rest).extend(by_text[keys[j]])
    texts = [rows[i][0] for i in pool_rows]
    task = [rows[i] for i in rest]
    half = len(task) // 2
    return texts, task[:half], task[half:]


def write(family: str, work: Path, pool: int, seed: int, data: Path) -> dict:
    rows = FAMILIES[family](data)
    texts, train, test = split_family(rows, pool, seed)
    overlap = {norm(t) for t in texts} & {norm(t) for t, _ in train + test}
    assert not overlap, f"{len(overlap)} texts in the pool and the task"
    (work / "task").mkdir(parents=True, exist_ok=True)
    (work / "pool.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    for name, part in (("train", train), ("test", test)):
        (work / "task" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in part),
            encoding="utf-8")
    if family in NAMES:
        # the same task with its label names; named "task" as the directory task is, so that its
        # K-shot splits are the same rows
        (work / "task_named.yaml").write_text(json.dumps({
            "name": "task", "type": "sequence_classification",
            "source": {"kind": "files", "format": "jsonl",
                       "files": {"train": "task/train.jsonl", "test": "task/test.jsonl"}},
            "label_names": NAMES[family]}, indent=1) + "\n")
    info = {"family": family, "seed": seed, "rows": len(rows), "pool": len(texts),
            "train": len(train), "test": len(test), "shared_texts": 0}
    (work / "pool.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--pool", type=int, default=5000, help="unlabelled texts (default 5000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    print(json.dumps(write(args.family, args.work, args.pool, args.seed, args.data)))


if __name__ == "__main__":
    main()
