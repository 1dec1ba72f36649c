"""A table of bad inputs: each is one line on stderr naming the culprit, exit code 2, no traceback,
no hang, and no checkpoint or results file left behind."""

# the table reads best one case per line
# ruff: noqa: E501
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())


def files(tmp: Path) -> dict[str, str]:
    (tmp / "good.csv").write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n"
                                                           for i in range(20)))
    (tmp / "nolabel.csv").write_text("text,y\nhello,a\n")
    (tmp / "badlabel.csv").write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n"
                                                               for i in range(9)) + "t9,zzz\n")
    (tmp / "empty.csv").write_text("text,label\n")
    (tmp / "bad.yaml").write_text("meta: {steps: [unclosed\n")
    (tmp / "notamodel").mkdir(exist_ok=True)
    (tmp / "notamodel" / "config.json").write_text("{}")
    (tmp / "trunc").mkdir(exist_ok=True)
    (tmp / "trunc" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32,
                                                           "num_hidden_layers": 1,
                                                           "num_attention_heads": 2,
                                                           "intermediate_size": 32}))
    (tmp / "trunc" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    return {k: str(tmp / k) for k in ("good.csv", "nolabel.csv", "badlabel.csv", "empty.csv",
                                      "bad.yaml", "notamodel", "trunc")}


def task(csv: str, **kw) -> dict:
    return {"name": "mine", "type": "sequence_classification", "max_length": 16,
            "source": {"kind": "files", "format": "csv", "files": {"train": csv}}, **kw}


def cfg_with(tmp: Path, **changes) -> str:
    data = json.loads(json.dumps(TINY))
    data["output_dir"] = str(tmp / "out")
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    p = tmp / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


# (id, argv builder, text the one-line error must contain)
CASES = [
    ("yaml-does-not-parse", lambda t, f: ["train", "--config", f["bad.yaml"]],
     "YAML does not parse"),
    ("missing-config-file", lambda t, f: ["train", "--config", str(t / "nope.yaml")],
     "nope.yaml: not found"),
    ("unknown-key", lambda t, f: ["train", "--config", cfg_with(t), "meta.stepz=3"],
     "config key 'meta.stepz': unknown key"),
    ("wrong-type", lambda t, f: ["train", "--config", cfg_with(t), "meta.steps=many"],
     "config key 'meta.steps'"),
    ("unknown-algorithm", lambda t, f: ["train", "--config", cfg_with(t), "meta.algorithm=magic"],
     "config key 'meta.algorithm'"),
    ("unknown-task-type", lambda t, f: ["train", "--config", cfg_with(t, tasks=[task(f["good.csv"],
                                                                                     type="summarize")])],
     "config key 'tasks.mine.type'"),
    ("unknown-ready-made-task", lambda t, f: ["train", "--config", cfg_with(t, tasks=[{"use": "no_such"}])], "'no_such': not a ready-made"),
    ("all-weights-zero", lambda t, f: ["train", "--config", cfg_with(t, **{"tasks.0.weight": 0,
                                                                           "tasks.1.weight": 0})],
     "every task has mixture weight 0"),
    ("negative-weight", lambda t, f: ["train", "--config", cfg_with(t), "tasks.bbc_news.weight=-1"],
     "config key 'tasks.bbc_news.weight'"),
    ("nan-weight", lambda t, f: ["train", "--config", cfg_with(t), "tasks.bbc_news.weight=.nan"],
     "config key 'tasks.bbc_news.weight'"),
    ("negative-inner-steps", lambda t, f: ["train", "--config", cfg_with(t), "meta.inner_steps=-1"],
     "config key 'meta.inner_steps'"),
    ("reptile-zero-inner-steps", lambda t, f: ["train", "--config", cfg_with(t),
                                               "meta.algorithm=reptile", "meta.inner_steps=0"],
     "reptile needs at least 1 inner step"),
    ("metaopt-lambda-zero", lambda t, f: ["train", "--config", cfg_with(t),
                                          "meta.algorithm=metaopt", "meta.metaopt.lambda=0"],
     "config key 'meta.metaopt.lambda'"),
    ("metaopt-unknown-head", lambda t, f: ["train", "--config", cfg_with(t),
                                           "meta.algorithm=metaopt", "meta.metaopt.head=lasso"],
     "config key 'meta.metaopt.head'"),
    ("metaopt-svm-without-solver", lambda t, f: ["train", "--config", cfg_with(t),
                                                 "meta.algorithm=metaopt",
                                                  "meta.metaopt.head=svm"],
     "head: svm needs a solver setting: iterations"),
    ("pcgrad-collective", lambda t, f: ["train", "--config", cfg_with(t), "meta.combine=pcgrad",
                                        "meta.reduce=collective"],
     "config key 'meta.combine'"),
    # a worker computes several tasks (resources.workers); a process group has a rank per task
    ("workers-collective", lambda t, f: ["train", "--config", cfg_with(t), "resources.workers=1",
                                         "meta.reduce=collective"],
     "config key 'resources.workers': 1 workers for 2 task actors need meta.reduce=driver"),
    ("workers-zero", lambda t, f: ["train", "--config", cfg_with(t), "resources.workers=0"],
     "config key 'resources.workers'"),
    ("missing-file", lambda t, f: ["train", "--config", cfg_with(t, tasks=[task(str(t / "gone.csv"))])], "gone.csv: file not found"),
    ("missing-column", lambda t, f: ["train", "--config", cfg_with(t, tasks=[task(f["nolabel.csv"])])], "missing column 'label'"),
    ("label-outside-set", lambda t, f: ["train", "--config", cfg_with(t, tasks=[task(f["badlabel.csv"], labels=["a", "b"])])],
     "badlabel.csv, row 10: label 'zzz' is not in the label set"),
    # checked before Ray starts: the error is the data's, not "no Ray cluster answers" at an address
    # where none does
    ("label-outside-set-before-ray", lambda t, f: ["train", "--config", cfg_with(t, tasks=[task(f["badlabel.csv"], labels=["a", "b"])]), "--address", "127.0.0.9:6399"],
     "badlabel.csv, row 10: label 'zzz' is not in the label set"),
    ("benchmark-label-outside-set-before-ray", lambda t, f: ["benchmark", "--config",
                                                             cfg_with(t, tasks=[task(f["badlabel.csv"], labels=["a", "b"])]), "--address", "127.0.0.9:6399", "--output", str(t / "out" / "bench")],
     "badlabel.csv, row 10: label 'zzz' is not in the label set"),
    ("validation-setting-unknown-method", lambda t, f: ["train", "--config", cfg_with(t, **{"eval.validation": {
        "tasks": [task(f["good.csv"], name="held")], "ways": 2, "settings": [{"shots": 1},
                                                                             {"method": "magic"}]}})],
     "config key 'eval.validation.settings.1.method': Input should be 'prototype', 'ridge', 'svm' "
     "or 'finetune'"),
    # a validation setting that a task cannot supply (10 rows a class, 9 shots + 5 queries): before
    # Ray starts
    ("validation-setting-too-many-shots-before-ray", lambda t, f: ["train", "--config",
                                                                   cfg_with(t, **{"eval.validation": {
        "tasks": [task(f["good.csv"],
                       name="held")], "ways": 2, "queries": 5, "settings": [{"shots": 1},
                                                                            {"shots": 9}]}}),
        "--address", "127.0.0.9:6399"],
     "task 'held': scoring needs 2 classes (eval.validation.settings[1].ways) with 14 rows each"),
    ("empty-split", lambda t, f: ["train", "--config", cfg_with(t, tasks=[task(f["good.csv"]) | {
        "source": {"kind": "files", "format": "csv", "files": {"train": f["good.csv"],
                                                               "test": f["empty.csv"]}}}])],
     "split 'test' is empty"),
    ("lora-targets-absent", lambda t, f: ["train", "--config", cfg_with(t), "model.trainable=lora",
                                          "model.lora.target_modules=[c_attn]"],
     "config key 'model.lora.target_modules': no module named 'c_attn' in this bert (its "
     "projections: dense"),
    ("top-layers-too-many", lambda t, f: ["train", "--config", cfg_with(t),
                                          "model.trainable=top_layers", "model.top_layers=7"],
     "config key 'model.top_layers': 7 is more than the model's 2 layers"),
    ("unreachable-address", lambda t, f: ["train", "--config", cfg_with(t), "--address",
                                          "127.0.0.9:6399"], "no Ray cluster answers"),
    ("infeasible-resources", lambda t, f: ["train", "--config", cfg_with(t),
                                           "resources.num_gpus_per_actor=1"],
     "asks for GPU=1, but no node has that much"),
    # memory declared to Ray (resources.memory_per_actor) that no node has: one line before any
    # actor starts, not an actor pending forever or one killed by Ray's memory monitor
    ("memory-no-node-has", lambda t, f: ["train", "--config", cfg_with(t),
                                         "resources.memory_per_actor=100000"],
     "asks for memory=100000.00GB, but no node has that much"),
    ("init-not-a-model", lambda t, f: ["evaluate", "--init", f["notamodel"], "--task",
                                       "chatterbot_topics",
                                       "--output", str(t / "out" / "r.json")], "notamodel"),
    ("init-does-not-exist", lambda t, f: ["evaluate", "--init", str(t / "nope"), "--task",
                                          "chatterbot_topics",
                                          "--output", str(t / "out" / "r.json")],
     "nope: no such directory ("),
    ("truncated-safetensors", lambda t, f: ["evaluate", "--init", f["trunc"], "--task",
                                            "chatterbot_topics",
                                            "--output", str(t / "out" / "r.json")], "trunc"),
    ("k-larger-than-class", lambda t, f: ["evaluate", "--init", "offline:all-MiniLM-L6-v2",
                                          "--task", "chatterbot_topics",
                                          "--shots", "500", "--output", str(t / "out" / "r.json")],
     "K=500 but class"),
    ("episodic-with-address", lambda t, f: ["evaluate", "--init", "offline:all-MiniLM-L6-v2",
                                            "--task", "chatterbot_topics",
                                            "--episodic", "--address", "127.0.0.9:6399", "--output",
                                            str(t / "out" / "r.json")],
     "--episodic scores its episodes in this process"),
    ("bad-shots", lambda t, f: ["evaluate", "--init", "offline:all-MiniLM-L6-v2", "--task",
                                "chatterbot_topics",
                                "--shots", "4,x", "--output", str(t / "out" / "r.json")],
     "comma-separated integers"),
]


# Cases whose error comes from a task actor (reading the data): their command joins this test
# process's Ray instance (`--address`) instead of starting one of its own, seconds each. The
# embedded default's own instance is still exercised by the cases that need it (infeasible
# resources, evaluate) and by test_trainer's CLI run.
JOIN = {"missing-file", "missing-column", "label-outside-set", "empty-split"}


@pytest.fixture(scope="module")
def ray_address(ray_local) -> str:
    return ray_local.get_runtime_context().gcs_address


@pytest.mark.parametrize("name, argv, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, expect, tmp_path, cli, request):
    f = files(tmp_path)
    join = ["--address", request.getfixturevalue("ray_address")] if name in JOIN else []
    r = cli.run(argv(tmp_path, f) + join, cwd=REPO, timeout=180)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("raymeta: error:")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and expect in lines[0], r.stderr[-2000:]
    out = tmp_path / "out"
    assert (not (out / "checkpoints").exists() and not (out / "final").exists()
            and not (out / "r.json").exists())


def test_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20
