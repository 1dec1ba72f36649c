"""Where a task of shuffled labels' weight goes under learned task weights
(benchmarks/results/learned-weights.md).

The general-purpose recipe (configs/recipes/general_alignment.yaml's alignment variant: the seven
tasks, ProtoNet, η and ε from its search) with one more task: TREC's training questions with their
coarse labels shuffled (seeded), so its gradient carries no signal about any task. It meta-trains
for ``--steps`` steps with ``meta.weighting.rule: alignment`` (the validation tasks as targets) and
prints each task's weight over the steps; the run's task_weights.png is copied to
benchmarks/figures/noise_task_weights.png.

    python benchmarks/noise_task.py --steps 30 --out /tmp/noise_task     # 5 min 40 s here, beside
    another run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from pathlib import Path

from raymeta.config import load_config
from raymeta.train.trainer import MetaTrainer

HERE = Path(__file__).resolve().parent


def shuffled_trec(data_dir: Path, out: Path, seed: int = 0) -> Path:
    """TREC's training questions (coarse classes) as CSV, labels shuffled: the same texts, the same
    label counts."""
    rows = []
    for line in (data_dir / "trec" / "train_5500.label").read_text(encoding="latin-1").splitlines():
        label, _, text = line.partition(" ")
        rows.append((text.replace('"', "'"), label.split(":")[0]))
    labels = [y for _, y in rows]
    random.Random(seed).shuffle(labels)
    path = out / "trec_shuffled.csv"
    path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for (t, _), y in zip(rows, labels)))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="/tmp/noise_task")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data_dir = Path(os.environ.get("RAYMETA_DATA_DIR", HERE.parent.parent / "shared" / "data"))
    noise = shuffled_trec(data_dir, out)
    data = load_config(HERE.parent / "configs" / "recipes" / "general_alignment.yaml",
                       overrides=[f"output_dir={out / 'run'}",
                                  f"meta.steps={args.steps}"]).model_dump(mode="json")
    data["eval"]["validation"] = None  # the weights are what is measured; no best step to choose
    data["tasks"].append({"name": "trec_shuffled", "type": "sequence_classification",
                          "max_length": 48,
                          "source": {"kind": "files", "format": "csv",
                                     "files": {"train": str(noise)}}})
    data["meta"]["weighting"] = {"rule": "alignment", "lr": 21.3,
                                 "floor": 0.071 / len(data["tasks"]), "shots": [1, 5],
                                 "target": [{"use": "huffpost_meta_val"},
                                            {"use": "fewrel_meta_train"},
                                            {"use": "chatterbot_topics_val"}]}
    data["optim"]["lr"] = 6.9e-5  # the alignment variant's (its search's choice)
    MetaTrainer(load_config(data=data)).run()
    recs = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "alignment" in r]
    tasks = list(recs[0]["weights"])
    print("| step | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for r in recs[:: max(1, len(recs) // 10)] + [recs[-1]]:
        print(f"| {r['step']} | " + " | ".join(f"{r['weights'][t]:.3f}" for t in tasks) + " |")
    mean_cos = {t: sum(r["alignment"][t] for r in recs
                       if r["alignment"].get(t) is not None) / len(recs) for t in tasks}
    print("mean cos(g_i, g_target): " + ", ".join(f"{t} {c:+.3f}" for t, c in mean_cos.items()))
    shutil.copy(out / "run" / "task_weights.png", HERE / "figures" / "noise_task_weights.png")


if __name__ == "__main__":
    main()
