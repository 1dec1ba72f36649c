"""``raymeta fit`` and ``raymeta predict``: every bad input is one line, exit 2, before any model
loads or Ray starts, and nothing is written. Also the pieces of the choice that need no model: the
folds, the temperature, a logistic regression as a linear head."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.classify.classifier import CLASSIFIER_JSON, FORMAT
from raymeta.classify.heads import _logistic_head, balanced_weights
from raymeta.classify.labelled import read_labelled
from raymeta.classify.select import cv_folds, fit_temperature
from raymeta.errors import DataError

from ..cli_forks import CliForks


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _good(n: int = 3) -> list[dict]:
    return [{"text": f"{c} example {i}", "label": c} for c in ("a", "b") for i in range(n)]


@pytest.fixture
def raymeta(cli: CliForks, tmp_path: Path):
    """``raymeta(*args)`` in ``tmp_path``: its one error line, after checking exit 2, one line, no
    traceback, and that no --output was written."""

    def run(*args: str) -> str:
        started = time.monotonic()
        r = cli.run(list(args), cwd=tmp_path, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert time.monotonic() - started < 60  # no model load, no Ray
        assert not (tmp_path / "clf").exists() and not (tmp_path / "out.csv").exists()
        return lines[0].removeprefix("raymeta: error: ")

    return run


def test_fit_refuses_each_bad_input_in_one_line(raymeta, tmp_path):
    fit = ("fit", "--output", "clf", "--train")
    one = _jsonl(tmp_path / "one.jsonl", _good() + [{"text": "lonely", "label": "c"}])
    assert "every class needs at least 2 rows" in raymeta(*fit, str(one))
    assert "'c' (1)" in raymeta(*fit, str(one))
    single = _jsonl(tmp_path / "single.jsonl", [{"text": f"x {i}", "label": "a"}
                                                 for i in range(4)])
    assert "has one class ('a')" in raymeta(*fit, str(single))
    empty = _jsonl(tmp_path / "empty.jsonl", _good() + [{"text": "  ", "label": "a"},
                                                        {"text": "", "label": "b"}])
    msg = raymeta(*fit, str(empty))
    assert "2 empty or whitespace-only texts (rows 7, 8)" in msg and "empty.jsonl" in msg
    good = _jsonl(tmp_path / "good.jsonl", _good())
    msg = raymeta(*fit, str(good), "--label-names", '{"a": "alpha", "z": "zulu"}')
    assert msg.startswith("--label-names") and "lacks: z" in msg
    assert "no column 'sentence' (the file has: text, label)" in raymeta(
        *fit, str(good), "--text-column", "sentence")
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\nb,b\n".encode("latin-1"))
    assert "not UTF-8 text (byte 0xe9 at line 2)" in raymeta(*fit, "latin1.csv")
    assert "file not found" in raymeta(*fit, "missing.csv")


def test_fit_refuses_an_existing_output(cli: CliForks, tmp_path):
    good = _jsonl(tmp_path / "good.jsonl", _good())
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "keep").write_text("mine")
    r = cli.run(["fit", "--train", str(good), "--output", "clf"], cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        "raymeta: error: --output clf: exists (give --overwrite to replace it)")
    assert (tmp_path / "clf" / "keep").read_text() == "mine"


def test_predict_refuses_each_bad_input_in_one_line(raymeta, tmp_path):
    (tmp_path / "texts.csv").write_text("sentence\nhello\n")
    msg = raymeta("predict", "--model", "nowhere", "--input", "texts.csv", "--output", "out.csv")
    assert msg == "classifier 'nowhere' does not exist"
    (tmp_path / "notone").mkdir()
    msg = raymeta("predict", "--model", "notone", "--input", "texts.csv", "--output", "out.csv")
    assert "has no classifier.json of a raymeta classifier" in msg
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / CLASSIFIER_JSON).write_text(json.dumps({"format": FORMAT}))
    msg = raymeta("predict", "--model", "fake", "--input", "texts.csv", "--output", "out.csv")
    assert "no column 'text' (the file has: sentence); give --text-column" in msg
    assert "texts.csv" in msg
    (tmp_path / "done.csv").write_text("x\n")
    msg = raymeta("predict", "--model", "fake", "--input", "texts.csv", "--output", "done.csv",
                  "--text-column", "sentence")
    assert msg == "--output done.csv: exists (give --overwrite to replace it)"
    assert (tmp_path / "done.csv").read_text() == "x\n"


def test_labelled_rows_from_csv_jsonl_parquet_and_a_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"t{i}", "label": i % 2} for i in range(6)]
    _jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "a.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(6)))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    d = tmp_path / "dir"
    d.mkdir()
    _jsonl(d / "train.jsonl", rows)
    _jsonl(d / "test.jsonl", rows[:2])  # a directory's train.* only
    for src in ("a.jsonl", "a.csv", "a.parquet", "dir"):
        data = read_labelled(str(tmp_path / src), label_names={"0": "even", "1": "odd"})
        assert data.labels == ["even", "odd"] and data.counts == {"even": 3, "odd": 3}
        assert data.texts == [f"t{i}" for i in range(6)] and data.class_ids == [0, 1] * 3
    with pytest.raises(DataError, match="rows without a label"):
        _jsonl(tmp_path / "nolabel.jsonl", rows + [{"text": "x", "label": None}])
        read_labelled(str(tmp_path / "nolabel.jsonl"))


def test_folds_leave_one_out_per_class_when_classes_are_tiny():
    ids = [0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    folds = cv_folds(ids, max_folds=5, seed=0)
    assert len(folds) == 2  # the smallest class has 2 rows
    for train, held in folds:
        assert sorted(train + held) == list(range(len(ids)))
        assert sum(ids[i] == 0 for i in held) == 1
    assert len(cv_folds([0] * 8 + [1] * 8, max_folds=5, seed=0)) == 5
    assert cv_folds(ids, max_folds=5, seed=1) == cv_folds(ids, max_folds=5, seed=1)


def test_temperature_fits_overconfident_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (2000, 3))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = [int(rng.choice(3, p=row)) for row in p]  # labels drawn from the logits: calibrated at T=1
    assert 0.85 < fit_temperature(logits, y) < 1.15
    t = fit_temperature(logits * 10, y)  # the same scores, 10x overconfident
    assert 8.5 < t < 11.5


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_logistic_regression_is_a_linear_head_with_its_probabilities(n_classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.integers(0, n_classes, 60)
    lr = LogisticRegression(class_weight="balanced").fit(x, y)
    w, b = _logistic_head(lr, n_classes)
    probs = torch.softmax(torch.from_numpy(x) @ w.T + b, -1).numpy()
    assert np.allclose(probs, lr.predict_proba(x), atol=1e-5)


def test_balanced_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    ids = [0] * 6 + [1] * 2 + [2] * 4
    want = compute_class_weight("balanced", classes=np.arange(3), y=np.array(ids))
    assert np.allclose(balanced_weights(ids, 3).numpy(), want)


def test_setfit_names_track_adds_templated_rows_per_class():
    from raymeta.eval.setfit import TEMPLATED_PER_CLASS, setfit_rows

    rows = setfit_rows(["a b", "c d"], [1, 0], ["sports", "world news"], "About {name}.")
    assert rows["text"][:2] == ["a b", "c d"] and rows["label"][:2] == [1, 0]
    extra = list(zip(rows["text"][2:], rows["label"][2:]))
    assert len(extra) == 2 * TEMPLATED_PER_CLASS
    assert set(extra) == {("About sports.", 0), ("About world news.", 1)}
    assert setfit_rows(["x"], [0])["text"] == ["x"]
