"""Does meta-training with a metric improve the embeddings, or only their fit to that metric?

    python benchmarks/proto_cross_metric.py      # after: raymeta benchmark --config
    configs/proto_metric.yaml

Scores the pretrained model and runs of configs/proto_metric.yaml on that config's VALIDATION
episodes (the same rows and seeded episodes meta-validation used) with the prototype classifier
under both distances, squared Euclidean and cosine. Validation tasks only: no test task is read
(benchmarks/results/protonet-metric.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raymeta.config import ModelConfig, load_config  # noqa: E402
from raymeta.core.model import MetaModel, load_encoder, load_tokenizer  # noqa: E402
from raymeta.eval.scoring import choose_rows, protocol, score_episodes  # noqa: E402
from raymeta.tasks import load_task  # noqa: E402
from raymeta.tasks.registry import task_from_entry  # noqa: E402
from raymeta.train.validation import summarise_scores  # noqa: E402

RUNS = ["euclidean_t10/protonet/best", "euclidean_t10/fomaml/best", "cosine_t0.1/protonet/final",
        "euclidean_t1/protonet/final"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/proto_metric.yaml")
    ap.add_argument("--runs", default="runs/proto_metric/benchmark/runs",
                    help="the benchmark's runs/ directory")
    args = ap.parse_args()
    cfg = load_config(args.config)
    assert cfg.eval.validation is not None, "the config has no eval.validation"
    v = protocol(cfg, "validation")
    tok = load_tokenizer(cfg.model)
    tasks = [load_task(task_from_entry(e, data_dir=cfg.data_dir), tok, cfg.data_dir, cfg.cache_dir)
             for e in cfg.eval.validation.tasks]
    rows = {t.name: choose_rows(t, v) for t in tasks}  # what every validation of those runs scored
    inits = {"pretrained": cfg.model.name_or_path} | {r: str(Path(args.runs) / r) for r in RUNS}
    print("| init | squared Euclidean | cosine |\n|---|---|---|")
    for name, path in inits.items():
        model = MetaModel(load_encoder(ModelConfig(name_or_path=path)), None).eval()
        cells = []
        for distance in ("euclidean", "cosine"):
            p = v.model_copy(update={"distance": distance})
            s = summarise_scores({t.name: score_episodes(model, t, rows[t.name],
                                                         p).values for t in tasks})
            cells.append(f"{100 * s['score']:.1f} ± {100 * s['ci95']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
