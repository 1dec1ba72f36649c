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


Rows = list[tuple[str, str]]


def ag_news(data: Path) -> tuple[Rows, Rows | None]:
    """(text, label) of AG News test.csv: the description, as the ready-made task reads it. No
    test set of its own: pool, train and test rows are all drawn from these."""
    with open(data / "ag_news" / "test.csv", newline="", encoding="utf-8") as f:
        return [(row[2].replace("\\n", " ").strip(), row[0]) for row in csv.reader(f)], None


def banking77(data: Path) -> tuple[Rows, Rows | None]:
    """Banking77's train.csv (the pool and the K-shot rows are drawn from it) and its own test.csv,
    kept whole as the test rows, as CPFT's and FastFit's published 5- and 10-shot figures are."""
    def rows(split: str) -> Rows:
        with open(data / "banking77" / f"{split}.csv", newline="", encoding="utf-8") as f:
            return [(r["text"].strip(), r["category"]) for r in csv.DictReader(f)]
    return rows("train"), rows("test")


# CLINC150's 3 test domains (raymeta/tasks/catalog/clinc150_domains_test.yaml: the last 3 of
# numpy default_rng(0).permutation of the 10 sorted domain names)
CLINC_TEST_DOMAINS = ("auto_and_commute", "banking", "utility")
HUFFPOST_TEST_CLASSES = range(25, 41)  # huffpost_meta_test.yaml's classes (Bao et al. 2020)


def clinc45(data: Path) -> tuple[Rows, Rows | None]:
    """CLINC150's 45 intents of its 3 test domains: the pool and the K-shot rows from CLINC's train
    and validation rows of those intents (120 each), the test rows CLINC's own test rows (30
    each), as ``clinc150_domains_test`` scores them."""
    domains = json.loads((data / "clinc150" / "domains.json").read_text())
    intents = {i for d in CLINC_TEST_DOMAINS for i in domains[d]}
    full = json.loads((data / "clinc150" / "data_full.json").read_text())

    def rows(*splits: str) -> Rows:
        return [(t.strip(), y) for s in splits for t, y in full[s] if y in intents]
    return rows("train", "val"), rows("test")


def huffpost16(data: Path) -> tuple[Rows, Rows | None]:
    """HuffPost headlines of the 16 meta-test categories (25-40), 900 each; no test set of its
    own."""
    keep = {str(c) for c in HUFFPOST_TEST_CLASSES}
    with open(data / "huffpost_fewshot" / "huffpost.json", encoding="utf-8") as f:
        rows = [(r["raw"].strip(), str(r["label"])) for r in map(json.loads, f)]
    return [r for r in rows if r[1] in keep], None


def _huffpost_name(y: str, data: Path = DATA) -> str:
    names = json.loads((data / "huffpost_fewshot" / "label_names.json").read_text())
    return names[y].lower()


FAMILIES = {"ag_news": ag_news, "banking77": banking77, "clinc45": clinc45,
            "huffpost16": huffpost16}
# the classes' names, for the methods that read them (FastFit's label documents, SetFit's
# templates, the label-name track): AG News's classes.txt; Banking77's and CLINC's label ids,
# spaced; HuffPost's label_names.json
NAMES = {"ag_news": lambda y: {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}[y],
         "banking77": lambda y: y.replace("_", " "), "clinc45": lambda y: y.replace("_", " "),
         "huffpost16": _huffpost_name}


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def split_family(rows: Rows, pool: int, seed: int, test: Rows | None = None
                 ) -> tuple[list[str], Rows, Rows]:
    """The unlabelled pool, the task's train rows and its test rows: ``test`` where the family has
    its own (no text of it goes to the pool), else half of what the pool leaves. A text that occurs
    more than once goes wholly to one side, so no text is in the pool and the task both."""
    by_text: dict[str, list[int]] = {}
    for i, (t, _) in enumerate(rows):
        by_text.setdefault(norm(t), []).append(i)
    held = {norm(t) for t, _ in test or []}
    keys = sorted(by_text)
    order = np.random.default_rng(seed).permutation(len(keys))
    pool_rows, rest = [], []
    for j in order:
        to_pool = len(pool_rows) < pool and keys[j] not in held
        (pool_rows if to_pool else rest).extend(by_text[keys[j]])
    texts = [rows[i][0] for i in pool_rows]
    task = [rows[i] for i in rest]
    if test is not None:
        return texts, task, list(test)
    half = len(task) // 2
    return texts, task[:half], task[half:]


def write(family: str, work: Path, pool: int, seed: int, data: Path) -> dict:
    rows, own_test = FAMILIES[family](data)
    texts, train, test = split_family(rows, pool, seed, own_test)
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
            "label_names": {y: NAMES[family](y) for y in sorted({y for _, y in train})}},
            indent=1) + "\n")
    info = {"family": family, "seed": seed, "rows": len(rows) + len(own_test or []),
            "pool": len(texts),
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
