"""``raymeta predict`` against SetFit's ``predict`` on the same model and rows, and the memory of
``raymeta predict`` as its input grows.

1. Throughput. One classifier (``raymeta fit --method setfit`` on TREC's K = 8 rows, MiniLM-L6)
   labels the same N texts three ways, alternated ``--rounds`` times in one run: ``raymeta
   predict`` (a Ray Data job from a CSV file to a CSV file, start-up included),
   :meth:`Classifier.predict` in this process, and ``setfit.SetFitModel.predict`` on the same body
   (sentence-transformers, mean pooling) and the same head (a logistic regression with the same
   coefficients). Rows per second, and the ratios.
2. Memory. ``raymeta predict`` on ``--memory-rows`` (e.g. 10k and 100k) rows with a tiny
   classifier: the peak PSS of the whole process tree (this process, the Ray processes it started,
   the workers), sampled every 0.2 s, so that shared pages count once.

    python benchmarks/predict_throughput.py --rows 4000 --rounds 2 --memory-rows 10000 100000 \
        --out benchmarks/results/predict_throughput.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def tree_pss() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakPss:
    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss())
            self._stop.wait(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def write_csv(path: Path, texts: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i, t in enumerate(texts):
            w.writerow([i, t])


def setfit_of(clf) -> object:
    """The classifier as a ``setfit.SetFitModel``: the same encoder weights and the same logistic
    regression coefficients."""
    import setfit
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    try:
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    with tempfile.TemporaryDirectory() as tmp:
        clf.encoder.save_pretrained(tmp)
        clf.tokenizer.save_pretrained(tmp)
        word = Transformer(tmp, max_seq_length=clf.max_length)
        body = SentenceTransformer(modules=[word, Pooling(clf.weight.shape[1], "mean")])
    head = LogisticRegression()
    head.coef_ = clf.weight.numpy().astype(np.float64)
    head.intercept_ = clf.bias.numpy().astype(np.float64)
    head.classes_ = np.arange(clf.weight.shape[0])
    return setfit.SetFitModel(model_body=body, model_head=head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--memory-rows", nargs="*", type=int, default=[10000, 100000])
    p.add_argument("--out", default="benchmarks/results/predict_throughput.json")
    args = p.parse_args()

    import torch

    from raymeta.classify import Classifier, FitSettings, fit, predict_file
    from raymeta.config import ModelConfig
    from raymeta.core.checkpoint import export_model
    from raymeta.core.model import load_encoder, load_tokenizer

    data = Path(os.environ.get("RAYMETA_DATA_DIR", "../shared/data"))
    rows = [ln.split(" ", 1) for ln in (data / "trec" / "train_5500.label").read_text(
        encoding="latin-1").splitlines() if ln.strip()]
    by_class: dict[str, list[str]] = {}
    for label, text in rows:
        by_class.setdefault(label.split(":")[0], []).append(text)
    work = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    train = [{"text": t, "label": c} for c, ts in sorted(by_class.items()) for t in ts[:8]]
    (work / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    fit(str(work / "train.jsonl"), output=str(work / "clf"), method="setfit",
        settings=FitSettings(max_length=128), progress=False)
    texts = [t for _, t in rows][: args.rows]
    texts = (texts * (args.rows // len(texts) + 1))[: args.rows]
    write_csv(work / "in.csv", texts)
    clf = Classifier.load(work / "clf")
    st = setfit_of(clf)
    threads = torch.get_num_threads()
    report: dict = {"command": "python benchmarks/predict_throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()), "rows": args.rows, "torch_threads": threads,
        "rounds": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        out = predict_file(str(work / "clf"), str(work / "in.csv"), str(work / "out.csv"),
                           overwrite=True, progress=False)
        t_ray = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = clf.predict(texts, batch_size=64)
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = st.predict(texts, batch_size=64, show_progress_bar=False)
        t_setfit = time.perf_counter() - t0
        agree = float(np.mean([clf.labels[int(i)] == o for i, o in zip(theirs, ours)]))
        rnd = {"raymeta_predict_rows_s": args.rows / t_ray, "classifier_rows_s": args.rows
               / t_local, "setfit_rows_s": args.rows / t_setfit, "labels_agree": agree,
               "ray_job_rows": out["rows"]}
        rnd["ratio_raymeta_predict_to_setfit"] = rnd["raymeta_predict_rows_s"] / rnd[
            "setfit_rows_s"]
        rnd["ratio_classifier_to_setfit"] = rnd["classifier_rows_s"] / rnd["setfit_rows_s"]
        print(json.dumps(rnd), flush=True)
        report["rounds"].append(rnd)
    # memory: a tiny classifier, so that the input, not the model, is what could grow
    import yaml

    import raymeta

    tiny_yaml = Path(raymeta.__file__).parent / "configs" / "tiny.yaml"
    TINY_BERT = yaml.safe_load(tiny_yaml.read_text())["model"]["from_config"]
    torch.manual_seed(0)
    cfg = ModelConfig(from_config=TINY_BERT)
    tok = load_tokenizer(cfg)
    tiny = export_model(work / "tiny", load_encoder(cfg, len(tok)), tok)
    fit(str(work / "train.jsonl"), output=str(work / "tiny_clf"), base=str(tiny),
        method="prototype", progress=False)
    report["memory"] = []
    for n in args.memory_rows:
        long = [(t + " ") * 8 for t in (texts * (n // len(texts) + 1))[:n]]
        write_csv(work / f"in_{n}.csv", long)
        base = tree_pss()
        with PeakPss() as peak:
            t0 = time.perf_counter()
            out = predict_file(str(work / "tiny_clf"), str(work / f"in_{n}.csv"),
                               str(work / f"out_{n}.csv"), overwrite=True, progress=False)
            secs = time.perf_counter() - t0
        m = {"rows": n, "input_mb": (work / f"in_{n}.csv").stat().st_size / 2**20,
             "output_mb": (work / f"out_{n}.csv").stat().st_size / 2**20,
             "peak_tree_pss_mb": peak.peak / 2**20, "before_pss_mb": base / 2**20,
             "seconds": secs, "rows_written": out["rows"]}
        print(json.dumps(m), flush=True)
        report["memory"].append(m)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
