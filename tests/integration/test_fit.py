"""``raymeta fit`` and ``raymeta predict`` end to end on a local Ray instance: the classifier
directory round-trips (and loads without raymeta), ``auto`` never picks a harmful init and picks a
better one, and ``predict`` labels a file through Ray Data in input order."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.classify import Classifier, FitSettings, fit, predict_file
from raymeta.classify.card import standalone_code
from raymeta.config import ModelConfig
from raymeta.core.checkpoint import export_model
from raymeta.core.model import load_encoder, load_tokenizer
from raymeta.eval.setfit import SetfitSettings

from .test_evaluate import tiny_init  # noqa: F401  (the fixture)

PLAIN = "offline:all-MiniLM-L6-v2"
QUICK = FitSettings(setfit=SetfitSettings(iterations=1, batch_size=8), max_length=16)
WORDS = {"red": ["cherry", "tomato", "blood", "ruby"], "green": ["grass", "leaf", "frog", "lime"],
         "blue": ["sky", "sea", "ocean", "sapphire"]}


def colours(path: Path, per_class: int = 5) -> Path:
    rows = [{"text": f"the {w[i % 4]} one", "label": c} for c, w in WORDS.items()
            for i in range(per_class)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def blank_init(tmp_path_factory) -> str:
    """MiniLM with every weight zeroed: each text embeds to the same vector, and training cannot
    change that (a zero LayerNorm weight passes no gradient below it). No head on it can beat
    chance, whatever the seed: the deliberately harmful init."""
    cfg = ModelConfig(name_or_path=PLAIN)
    enc = load_encoder(cfg)
    with torch.no_grad():
        for p in enc.parameters():
            p.zero_()
    return str(export_model(tmp_path_factory.mktemp("blank") / "blank", enc, load_tokenizer(cfg)))


def test_fit_round_trip_and_the_card_loads_it_without_raymeta(ray_local, tiny_init,  # noqa: F811
                                                              tmp_path):
    train = colours(tmp_path / "train.jsonl")
    res = fit(str(train), output=str(tmp_path / "clf"), base=tiny_init, method="auto",
              settings=QUICK, export=["onnx"], progress=False)
    out = tmp_path / "clf"
    assert res.path == out and {"classifier.json", "head.safetensors", "model.safetensors",
                                "config.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.joblib"))
    spec = json.loads((out / "classifier.json").read_text())
    assert spec["labels"] == ["blue", "green", "red"]
    assert [(s["method"]) for s in spec["selection"]] == ["setfit", "prototype", "ridge"]
    assert spec["chosen"]["method"] == res.chosen.method and spec["train_rows_per_class"] == {
        "blue": 5, "green": 5, "red": 5}
    card = (out / "README.md").read_text()
    assert "How it was chosen" in card and "| blue | 5 |" in card
    texts = ["the sky one", "a frog", "tomato soup", "nothing in particular"]
    a, b = Classifier.load(out), Classifier.load(out)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    for (n1, p1), (n2, p2) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    probs = a.predict_proba(texts)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-6)
    assert a.predict(texts) == [spec["labels"][i] for i in probs.argmax(1)]
    # the card's code, in a fresh process that never imports raymeta
    script = standalone_code(spec["pooling"], str(out)) + (
        "import sys\n"
        f"p = predict_proba({texts!r})\n"
        "assert 'raymeta' not in sys.modules\n"
        "print(json.dumps(p.tolist()))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    fresh = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
    assert (fresh.argmax(1) == probs.argmax(1)).all()
    assert np.abs(fresh - probs).max() < 1e-6
    # the ONNX graph: the same probabilities from onnxruntime, without torch
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = a.tokenizer(texts, padding=True, return_tensors="np")
    got = session.run(None, {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    assert np.abs(got[0] - probs).max() < 1e-4


@pytest.mark.slow  # SetFit on MiniLM, 2 inits x 5 folds: the slow tier (CI runs it)
def test_auto_keeps_the_plain_encoder_when_the_init_is_harmful(ray_local, blank_init, tmp_path):
    train = colours(tmp_path / "train.jsonl")
    res = fit(str(train), output=str(tmp_path / "clf"), inits=[blank_init], base=PLAIN,
              settings=QUICK, progress=False)
    assert res.chosen.name == f"plain: {PLAIN}", res.summary()
    by = {(s.candidate.name, s.candidate.method): s.mean for s in res.scores}
    for method in ("setfit", "prototype", "ridge"):  # the blank init scores chance at best
        assert by[(blank_init, method)] <= 0.4 + 1e-9


@pytest.mark.slow
def test_auto_takes_the_init_when_it_cross_validates_better(ray_local, blank_init, tmp_path):
    # the other way round: the blank encoder as the base, MiniLM as the offered init
    train = colours(tmp_path / "train.jsonl")
    res = fit(str(train), output=str(tmp_path / "clf"), inits=[PLAIN], base=blank_init,
              settings=QUICK, progress=False)
    assert res.chosen.name == PLAIN, res.summary()
    assert "points over" in res.summary()


def test_predict_labels_a_file_in_input_order(ray_local, tiny_init, tmp_path,  # noqa: F811
                                              monkeypatch):
    train = colours(tmp_path / "train.jsonl")
    fit(str(train), output=str(tmp_path / "clf"), base=tiny_init, method="prototype",
        settings=QUICK, progress=False)
    words = [w for ws in WORDS.values() for w in ws]
    with open(tmp_path / "in.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(600):
            w.writerow([i, f"the {words[i % len(words)]} one"])
    # relative names, from a directory that is not the Ray workers' (as when joining a cluster)
    monkeypatch.chdir(tmp_path)
    out = predict_file("clf", "in.csv", "out.csv", batch_size=32, progress=False)
    assert out["rows"] == 600
    with open(tmp_path / "out.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert [int(r["id"]) for r in got] == list(range(600))  # input order, other columns kept
    clf = Classifier.load(tmp_path / "clf")
    want = clf.predict([r["text"] for r in got[:50]])
    assert [r["predicted_label"] for r in got[:50]] == want
    assert set(got[0]) == {"id", "text", "predicted_label", "prob:blue", "prob:green", "prob:red"}
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
