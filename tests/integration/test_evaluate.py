"""`raymeta evaluate` and `raymeta benchmark --quick` on a local Ray instance, with a tiny model."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from raymeta.config import ModelConfig, load_config
from raymeta.core.checkpoint import export_model
from raymeta.core.model import load_encoder, load_tokenizer
from raymeta.errors import DataError, ModelError
from raymeta.eval.evaluate import evaluate, evaluate_episodic, resolve_eval_task, resolve_init
from raymeta.eval.finetune import FinetuneSettings

from ..conftest import TINY_BERT

QUICK = FinetuneSettings(steps=3, max_test=40, batch_size=8)


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = ModelConfig(from_config=TINY_BERT)
    tok = load_tokenizer(cfg)
    return str(export_model(tmp_path_factory.mktemp("init") / "tiny", load_encoder(cfg, len(tok)),
                            tok))


def jsonl_dir(root: Path, test_labels=("red", "green", "blue")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    words = {"red": "cherry tomato blood", "green": "grass leaf frog", "blue": "sky sea ocean",
             "purple": "plum violet grape"}
    train = [{"text": f"{words[c]} {i}", "label": c} for i in range(10) for c in ("red", "green",
                                                                                  "blue")]
    test = [{"text": f"the {words[c].split()[i % 3]} item {i}",
             "label": c} for i in range(8) for c in test_labels]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in train))
    (root / "test.jsonl").write_text("\n".join(json.dumps(r) for r in test))
    return root


def run(init, tasks, out, shots=(2, 4), splits=2, cache=None):
    return evaluate(init, tasks, shots=shots, n_splits=splits, settings=QUICK, seed=0, data_dir=".",
                    cache_dir=cache, output=out, progress=False)


def test_jsonl_directory_task_with_string_labels(ray_local, tiny_init, tmp_path):
    task = resolve_eval_task(str(jsonl_dir(tmp_path / "colors")))
    assert task.name == "colors" and task.type == "sequence_classification"
    out = run(tiny_init, [task], tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"] == out["tasks"]
    res = saved["tasks"]["colors"]
    assert res["metric"] == "accuracy" and set(res["shots"]) == {"2", "4"}
    for k, r in res["shots"].items():
        assert (len(r["values"]) == 2 and 0 <= r["mean"] <= 1 and r["std"] >= 0
                and r["ci95"] == r["ci95"])
        assert set(r["all"]) == {"accuracy", "macro_f1"}
        for rows in saved["splits"]["colors"][k]:
            assert len(rows) == 3 * int(k)  # K per class, 3 classes


def test_every_init_sees_the_same_splits(ray_local, tiny_init, tmp_path):
    task = resolve_eval_task(str(jsonl_dir(tmp_path / "c")))
    a = run(tiny_init, [task], None, shots=(2,))
    b = run("offline:all-MiniLM-L6-v2", [task], None, shots=(2,))
    assert a["splits"] == b["splits"]


def test_ner_and_qa_metrics(ray_local, tiny_init, mixed_data, tmp_path):
    from raymeta.config import TaskConfig

    ner = TaskConfig.model_validate({"name": "ner", "type": "token_classification",
                                     "max_length": 24,
                                     "source": {"kind": "files", "format": "conll",
                                                "test_fraction": 0.3,
                                                "files": {"train": str(mixed_data / "ner.conll")}}})
    qa = TaskConfig.model_validate({"name": "qa", "type": "extractive_qa", "max_length": 48,
                                    "stride": 16,
                                    "source": {"kind": "files", "format": "squad",
                                               "test_fraction": 0.3,
                                               "files": {"train": str(mixed_data / "qa.json")}}})
    out = run(tiny_init, [ner, qa], None, shots=(4,))
    assert set(out["tasks"]["ner"]["shots"]["4"]["all"]) == {"f1", "precision", "recall"}
    assert set(out["tasks"]["qa"]["shots"]["4"]["all"]) == {"exact_match", "f1"}


def test_bad_inputs_write_no_results(ray_local, tiny_init, tmp_path):
    out = tmp_path / "results.json"
    unseen = resolve_eval_task(str(jsonl_dir(tmp_path / "unseen", test_labels=("red", "purple"))))
    with pytest.raises(DataError,
                       match=r"test.jsonl, row 2: label 'purple' is not in the label set"):
        run(tiny_init, [unseen], out)
    ok = resolve_eval_task(str(jsonl_dir(tmp_path / "ok")))
    with pytest.raises(DataError, match=r"K=16 but class 'blue' has only 10 training examples"):
        run(tiny_init, [ok], out, shots=(4, 16))
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "x.txt").write_text("hi")
    with pytest.raises(ModelError,
                       match="notamodel: a directory, but neither a Hugging Face model"):
        resolve_init(str(tmp_path / "notamodel"))
    with pytest.raises(DataError, match="needs train.jsonl and test.jsonl"):
        resolve_eval_task(str(tmp_path / "notamodel"))
    assert not out.exists()


def test_episodic_prototype_and_finetuned_head(ray_local, tiny_init, tmp_path):
    task = resolve_eval_task(str(jsonl_dir(tmp_path / "e")))
    out = evaluate_episodic(tiny_init, [task], ways=3, shots=[1, 2], queries=3, episodes=20,
                            head_steps=3,
                            data_dir=".", cache_dir=None, output=tmp_path / "ep.json")
    ep = json.loads((tmp_path / "ep.json").read_text())["tasks"]["e"]["episodic"]
    assert set(ep) == {"3-way 1-shot",
                       "3-way 2-shot"} and out["tasks"]["e"]["episodic"].keys() == ep.keys()
    for res in ep.values():
        assert set(res) == {"prototype", "finetuned_head"} and res["prototype"]["n"] == 20


@pytest.mark.slow  # end to end; the slow tier CI runs (docs/testing.md)
def test_benchmark_quick_end_to_end(ray_local, tmp_path, caplog):
    from raymeta.benchmark import quick_config, run_benchmark

    cfg = quick_config(load_config("configs/tiny_benchmark.yaml",
                                   [f"output_dir={tmp_path}",
                                    "benchmark.algorithms=[multitask,protonet]"]))
    with caplog.at_level(logging.INFO, logger="raymeta.train"):
        report = run_benchmark(cfg, tmp_path / "bench")
    # multitask, then protonet on the same two tasks: the second run reset the first run's task
    # actors
    pids = [re.search(r"actor pid (\d+)",
                      r.getMessage())[1] for r in caplog.records if "actor pid" in r.getMessage()]
    assert len(pids) == 4 and pids[:2] == pids[2:], pids
    assert set(report["results"]) == {"pretrained", "multitask", "protonet"}
    for f in ("results.json", "results.md", "meta_training_curves.png",
              "scores_chatterbot_topics.png"):
        assert (tmp_path / "bench" / f).is_file(), f
    g = report["gain_over_pretrained"]["protonet"]["chatterbot_topics"]
    assert "K=2" in g and "5-way 1-shot prototype" in g
    md = (tmp_path / "bench" / "results.md").read_text()
    assert "gain over pretrained" in md and "gain over multitask" in md


def test_cli_evaluate(ray_local, cli, tiny_init, tmp_path):
    """Its runs go to this test's Ray instance (`--address`; raymeta turns token mode on itself)."""
    d = jsonl_dir(tmp_path / "cli")
    # --splits 1: the 95% CI is undefined, null in results.json (strict JSON, never a bare NaN)
    r = cli.run(["evaluate", "--init", tiny_init, "--task", str(d), "--shots", "2", "--splits", "1",
                 "--steps", "2",
                 "--max-test", "20", "--address", ray_local.get_runtime_context().gcs_address,
                 "--output", str(tmp_path / "r.json")], cwd=Path.cwd(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # a missing --init: test_bad_input.py
    assert "K=2" in r.stdout and (tmp_path / "r.json").is_file()
    # stdout holds the table alone: no progress bar (stderr) and no "Loading weights" bar (quiet
    # without -v)
    assert "%|" not in r.stdout and "\r" not in r.stdout, r.stdout
    assert "Loading weights" not in r.stdout + r.stderr, r.stderr[-2000:]
    table = [ln for ln in r.stdout.splitlines() if ln.lstrip().startswith("|")]
    # each table line at a line start
    assert table and all(ln.startswith("|") for ln in table), r.stdout
    json.loads((tmp_path / "r.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in results.json"))
    md = (tmp_path / "r.md").read_text()  # the table the command printed, beside results.json
    assert md.startswith(f"# raymeta evaluate: {tiny_init}\n") and "K=2" in md
    assert (tmp_path / "r.png").is_file()  # the score against K, beside it too


def test_cli_evaluate_pairs_two_inits_on_the_same_splits(ray_local, cli, tiny_init, tmp_path):
    """`--init A --init B`: both scored on the same splits in one round of runs; B's gain over A is
    the mean of the per-split differences, with the paired CI, in results.json, in the one table
    the command prints (and its .md), and the plot of score against K per init is beside them."""
    torch.manual_seed(1)
    cfg = ModelConfig(from_config=TINY_BERT)
    tok = load_tokenizer(cfg)
    other = str(export_model(tmp_path / "other", load_encoder(cfg, len(tok)), tok))
    d = jsonl_dir(tmp_path / "pair")
    out = tmp_path / "cmp.json"
    r = cli.run(["evaluate", "--init", tiny_init, "--init", other, "--task", str(d), "--method",
                 "prototype", "--shots", "2", "--splits", "2", "--max-test", "20", "--address",
                 ray_local.get_runtime_context().gcs_address, "--output", str(out)],
                cwd=Path.cwd(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["inits"] == [tiny_init, other] and res["baseline"] == tiny_init
    a, b = (res["results"][i] for i in (tiny_init, other))
    assert a["splits"] == b["splits"] and len(a["splits"]["pair"]["2"]) == 2
    va, vb = (x["tasks"]["pair"]["methods"]["prototype"]["2"]["values"] for x in (a, b))
    gain = res["gains"][other]["pair"]["K=2 prototype"]
    assert gain["values"] == pytest.approx([y - x for x, y in zip(va, vb)])
    assert gain["mean"] == pytest.approx(sum(vb) / 2 - sum(va) / 2) and gain["n"] == 2
    header = next(ln for ln in r.stdout.splitlines() if ln.startswith("| task"))
    assert header == f"| task | setting | {tiny_init} | {other} | gain: {other} |"
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("| pair (accuracy)"))
    assert f"{100 * (gain['mean']):+.1f} ± " in row
    md = out.with_suffix(".md").read_text()
    assert md.startswith(f"# raymeta evaluate: {tiny_init}, {other}\n") and header in md
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_evaluate_every_ready_made_task(ray_local, tiny_init, shared_data, tmp_path):
    """`raymeta evaluate` on each ready-made task (slow: about 3 minutes; run with -m slow)."""
    from raymeta.tasks import catalog_names, task_config

    names = catalog_names()
    out = evaluate(tiny_init, [task_config(n) for n in names], shots=(1,), n_splits=1,
                   settings=FinetuneSettings(steps=1, max_test=20, batch_size=8), seed=0,
                   data_dir=str(shared_data), cache_dir=str(tmp_path / "cache"), output=None,
                   progress=False)
    assert set(out["tasks"]) == set(names)
    for name, entry in out["tasks"].items():
        assert 0.0 <= entry["shots"]["1"]["mean"] <= 1.0, name
