"""``raymeta fit --method auto`` against plain + SetFit, on seeded K-shot splits of held-out tasks.

For each task, K and split: the K-shot rows (``raymeta evaluate``'s splits, so the same rows its
tables use) are cross-validated by ``fit``'s own selection (:mod:`raymeta.classify.select`), every
candidate is then refitted on all K-shot rows and scored on the same test rows, and the candidate
``auto`` chose is looked up. Reports, per task and K: each candidate's test accuracy, auto's, the
paired difference auto - plain+SetFit with its 95 % CI, auto - the best single candidate (best by
mean test accuracy, which auto cannot know), and how often auto chose each candidate.

    python benchmarks/fit_auto.py --tasks ag_news trec --shots 4 8 --splits 3 \
        --max-length 64 --out benchmarks/results/fit_auto.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import numpy as np


def summarise(runs: list[dict]) -> list[dict]:
    """Per (task, K): mean test accuracy of each candidate and of auto's choice, the paired
    differences auto - plain+SetFit and auto - the best single candidate, and auto's choices."""
    from raymeta.eval.metrics import paired_ci95

    out = []
    for key in dict.fromkeys((r["task"], r["k"]) for r in runs):
        mine = [r for r in runs if (r["task"], r["k"]) == key]
        auto = [r["auto_test"] for r in mine]
        means = {m: float(np.mean([r["test"][m] for r in mine])) for m in mine[0]["test"]}
        best = max(means, key=means.get)
        out.append({
            "task": key[0], "k": key[1], "n": len(mine), "auto": float(np.mean(auto)), **means,
            "auto_minus_setfit": paired_ci95(auto, [r["test"]["setfit"] for r in mine]),
            "auto_minus_best": paired_ci95(auto, [r["test"][best] for r in mine]),
            "best_single": best, "chosen": dict(Counter(r["auto"] for r in mine)),
            "seconds_per_fit_auto": float(np.mean([r["seconds_cv"] for r in mine])),
        })
    return out


def markdown(report: dict) -> str:
    """The summary as a Markdown table (``--report JSON`` prints it for a finished run)."""
    def pm(d: dict) -> str:
        return f"{100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f}"

    lines = ["| task | K | splits | plain + SetFit | plain + prototype | plain + ridge | auto | "
             "auto − SetFit | auto − best single | auto chose | fit auto, s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["summary"]:
        chose = ", ".join(f"{m} {n}" for m, n in sorted(s["chosen"].items()))
        lines.append(
            f"| {s['task']} | {s['k']} | {s['n']} | {100 * s['setfit']:.1f} | "
            f"{100 * s['prototype']:.1f} | {100 * s['ridge']:.1f} | {100 * s['auto']:.1f} | "
            f"{pm(s['auto_minus_setfit'])} | {pm(s['auto_minus_best'])} ({s['best_single']}) | "
            f"{chose} | {s['seconds_per_fit_auto']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["ag_news", "trec"])
    p.add_argument("--shots", nargs="+", type=int, default=[4, 8])
    p.add_argument("--splits", type=int, default=3)
    p.add_argument("--max-test", type=int, default=400)
    p.add_argument("--init", default="offline:all-MiniLM-L6-v2")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/fit_auto.json")
    p.add_argument("--report", metavar="JSON", help="print a finished run's table and stop")
    args = p.parse_args()
    if args.report:  # a finished run's JSON, or the run lines a run printed (a log)
        text = open(args.report).read()
        try:
            report = json.loads(text)
        except json.JSONDecodeError:
            runs = [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"task"')]
            report = {"runs": [r for r in runs if "split" in r]}
            report["summary"] = summarise(report["runs"])
        print(markdown(report))
        return

    import ray

    from raymeta.classify.heads import FitSettings, fit_candidate
    from raymeta.classify.select import Candidate, choose, cv_folds, score_candidates
    from raymeta.cluster import connect
    from raymeta.config import ModelConfig
    from raymeta.core.model import load_tokenizer
    from raymeta.eval.evaluate import kshot_splits, resolve_eval_task
    from raymeta.eval.finetune import test_rows
    from raymeta.eval.inits import resolve_init
    from raymeta.storage import local_model_path
    from raymeta.tasks import load_task

    data_dir = os.environ.get("RAYMETA_DATA_DIR", "../shared/data")
    init = resolve_init(args.init)
    tok = load_tokenizer(ModelConfig(name_or_path=init), fetch=local_model_path)
    cands = [Candidate(init, m, "plain") for m in ("setfit", "prototype", "ridge")]
    settings = FitSettings(max_length=args.max_length)
    connect(num_cpus=2)
    report: dict = {"command": "python benchmarks/fit_auto.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "report"), "runs": []}
    for name in args.tasks:
        task = load_task(resolve_eval_task(name), tok, data_dir, None)
        rows = test_rows(task, args.max_test, seed=0)
        test_texts = [str(t) for t in task.raw["test"].select(rows)["text"]]
        test_ids = np.asarray(task.class_ids("test"))[rows]
        labels = list(task.labels or [str(i) for i in range(task.num_labels)])
        train_ids_all = np.asarray(task.class_ids("train"))
        for k in args.shots:
            for split, train in enumerate(kshot_splits(task, k, args.splits, seed=0)):
                t0 = time.perf_counter()
                texts = [str(t) for t in task.raw["train"].select(train)["text"]]
                ids = [int(train_ids_all[r]) for r in train]
                folds = cv_folds(ids, max_folds=5, seed=split)
                scores = score_candidates(cands, texts, ids, labels, folds=folds,
                                          settings=settings, seed=split, progress=False)
                chosen = choose(scores).candidate.method
                cv_s = time.perf_counter() - t0
                test = {}
                for c in cands:
                    clf = fit_candidate(c.init, c.method, texts, ids, labels, settings=settings,
                                        seed=split)
                    pred = clf.logits(test_texts).argmax(-1).numpy()
                    test[c.method] = float((pred == test_ids).mean())
                run = {"task": name, "k": k, "split": split, "test": test, "auto": chosen,
                       "auto_test": test[chosen], "cv": {s.candidate.method: s.mean
                                                         for s in scores},
                       "seconds_cv": round(cv_s, 1),
                       "seconds_total": round(time.perf_counter() - t0, 1)}
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    summary = summarise(report["runs"])
    report["summary"] = summary
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    ray.shutdown()


if __name__ == "__main__":
    main()
