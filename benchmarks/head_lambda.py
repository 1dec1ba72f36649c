"""Choose the ridge and SVM heads' λ (``eval.ridge`` / ``eval.svm``) on validation classes only.

Embeds a validation task's rows once with an init (plain MiniLM by default), then scores seeded
N-way K-shot episodes with the ridge and SVM heads of :mod:`raymeta.core.base_learners` at every λ
of a grid, the prototype classifier beside them on the same episodes. Also the logit scale that
minimises the ridge head's mean query cross-entropy on those episodes (a 1-D calibration, Guo et al.
2017's temperature scaling): the starting point of ``meta.metaopt.scale``. Prints one Markdown table
(benchmarks/results/metaoptnet.md).

    python benchmarks/head_lambda.py --task huffpost_meta_val
    python benchmarks/head_lambda.py --task fewrel_meta_train --split test   # its held-back rows
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from raymeta.config import EpisodeConfig, RidgeConfig, SvmConfig
from raymeta.core.model import OFFLINE_MINILM
from raymeta.eval.episodic import classifier_logits, embed_task, episodic_accuracy
from raymeta.eval.evaluate import resolve_eval_task
from raymeta.tasks.episodes import sample_episode


def calibrated_scale(emb: np.ndarray, ids: np.ndarray, k: int, lam: float, episodes: int) -> float:
    """The scale s (on a log grid) minimising the mean query cross-entropy of s × the ridge head's
    logits."""
    x, cfg, logits, gold = torch.from_numpy(emb), EpisodeConfig(ways=5, shots=k, queries=15), [], []
    for e in range(episodes):
        s, q, classes = sample_episode(len(ids), ids, cfg, 0, "episodic-eval", e)
        local = {c: j for j, c in enumerate(classes)}
        ys = torch.tensor([local[int(ids[i])] for i in s])
        logits.append(classifier_logits("ridge", x[s], ys, len(classes), x[q],
                                        ridge=RidgeConfig(**{"lambda": lam})))
        gold.append(torch.tensor([local[int(ids[i])] for i in q]))
    z, y = torch.cat(logits), torch.cat(gold)
    grid = np.logspace(0, 4, 41)
    return float(grid[int(np.argmin([float(F.cross_entropy(g * z, y)) for g in grid]))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default=OFFLINE_MINILM)
    ap.add_argument("--task", action="append", required=True,
                    help="validation task(s), never a test task")
    ap.add_argument("--split", default="train", choices=["train", "test"], help="the rows scored")
    ap.add_argument("--lambdas", default="0.01,0.1,1,10,100")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--episodes", type=int, default=300)
    ap.add_argument("--svm-iterations", type=int, default=100)
    a = ap.parse_args()
    data_dir = os.environ.get("RAYMETA_DATA_DIR", "../shared/data")
    lambdas = [float(x) for x in a.lambdas.split(",")]
    shots = [int(x) for x in a.shots.split(",")]
    rows = []
    for name in a.task:
        spec = resolve_eval_task(name)
        emb, ids, _ = embed_task(a.init, spec, data_dir=data_dir, cache_dir=None, splits=(a.split,))
        for k in shots:
            kw = dict(ways=5, shots=k, queries=15, episodes=a.episodes, seed=0)
            base = episodic_accuracy(emb, ids, **kw)["prototype"].mean
            for lam in lambdas:
                r = episodic_accuracy(emb, ids, **kw, methods=("ridge", "svm"),
                                      ridge=RidgeConfig(**{"lambda": lam}),
                                      svm=SvmConfig(**{"lambda": lam}, iterations=a.svm_iterations))
                scale = calibrated_scale(emb, ids, k, lam, a.episodes)
                rows.append((name, k, lam, base, r["ridge"].mean, r["svm"].mean, scale))
    print("| task | K | λ | prototype | ridge | svm | ridge: calibrated scale "
          "|\n|---|---|---|---|---|---|---|")
    for name, k, lam, base, ridge, svm, scale in rows:
        print(f"| {name} | {k} | {lam:g} | {100 * base:.1f} | {100 * ridge:.1f} | {100 * svm:.1f} "
              f"| {scale:.3g} |")
    best = {}
    for head, col in (("ridge", 4), ("svm", 5)):
        score = {lam: np.mean([r[col] for r in rows if r[2] == lam]) for lam in lambdas}
        best[head] = max(score, key=score.get)
    print(f"\nbest λ (mean over tasks and K): ridge {best['ridge']:g}, svm {best['svm']:g}")


if __name__ == "__main__":
    main()
