"""``raymeta train`` with ``eval.validation.holdout_classes``: meta-training on the kept classes,
validation (and ``best``) on the held-out ones, the choice saved with the run
(``holdout_classes.json``; ``config.yaml`` holds the resolved run and reloads as it), and
``--resume`` with the same split, or a one-line refusal of another one."""

from __future__ import annotations

import json
from pathlib import Path

from raymeta.config import load_config
from raymeta.tasks.holdout import HOLDOUT_JSON, split_classes
from raymeta.train.validation import BEST_JSON

from .conftest import TOPICS, tiny_config, write_config


def _validations(out: Path) -> list[dict]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind") == "validation"]


def test_train_validates_on_held_out_classes_and_resumes_with_the_same_split(ray_local, cli,
                                                                             tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    words = {k: v.split() for k, v in TOPICS.items()}  # 4 topics, 12 rows each
    (data_dir / "topics.csv").write_text("text,label\n" + "".join(
        f"{' '.join(w[i % 4:] + w[:i % 4])} {w[i % 3]},{k}\n" for i in range(12) for k,
                                                                  w in words.items()))
    cfg = tiny_config(tmp_path, data_dir, algorithm="multitask", steps=2)
    cfg["tasks"] = [{"name": "topics", "type": "sequence_classification", "max_length": 16,
                     "source": {"kind": "files", "format": "csv",
                                "files": {"train": "${data_dir}/topics.csv"}}}]
    cfg["meta"]["episode"] = {"ways": 2, "shots": 2, "queries": 2}
    cfg["checkpoint"] = {"every_steps": 1}
    cfg["eval"] = {"validation": {"holdout_classes": 0.5, "ways": 2, "shots": 2, "queries": 3,
                                  "episodes": 10,
                                  "every_steps": 1}}
    path = write_config(tmp_path, cfg)
    address = ["--address", ray_local.get_runtime_context().gcs_address]
    out = Path(cfg["output_dir"])
    kept, held = split_classes("topics", list(TOPICS), 0.5, cfg["seed"])

    r = cli.run(["train", "--config", path, *address], cwd=Path.cwd(), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    # validation, and best, on the held-out classes only
    vals = _validations(out)
    assert [v["step"] for v in vals] == [0, 1, 2] and all(set(v["tasks"]) == {"topics_holdout"}
                                                          for v in vals)
    assert set(json.loads((out / "best" / BEST_JSON).read_text())["tasks"]) == {"topics_holdout"}
    # the choice, saved with the run
    saved = json.loads((out / HOLDOUT_JSON).read_text())
    assert saved == {"holdout_classes": 0.5, "seed": cfg["seed"], "unchanged": {},
                     "tasks": {"topics": {"validation_task": "topics_holdout", "classes": 4,
                                          "kept": kept, "held": held}}}
    # config.yaml is the resolved run: meta-training on the kept classes, validation on the held
    # ones; it reloads as is
    run = load_config(out / "config.yaml")
    assert run.task("topics").include_labels == kept and run.eval.validation.holdout_classes is None
    assert [(t["name"],
             t["include_labels"]) for t in run.eval.validation.tasks] == [("topics_holdout", held)]

    # --resume from the user's config: the same split, the run goes on
    before = (out / HOLDOUT_JSON).read_bytes()
    r = cli.run(["train", "--config", path, "--resume", "meta.steps=3", *address], cwd=Path.cwd(),
                timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ((out / HOLDOUT_JSON).read_bytes() == before
            and load_config(out / "config.yaml").tasks == run.tasks)
    assert [v["step"] for v in _validations(out)] == [0, 1, 2, 3]
    assert all(set(v["tasks"]) == {"topics_holdout"} for v in _validations(out))

    # a resume that would hold back other classes (another seed) is one line, exit 2, and the run is
    # left as it was
    r = cli.run(["train", "--config", path, "--resume", "meta.steps=4", "seed=4", *address],
                cwd=Path.cwd(), timeout=180)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("raymeta: error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(lines) == 1 and (f"--resume: the run held back classes with seed {cfg['seed']} "
                                f"({HOLDOUT_JSON})" in lines[0])
    assert [v["step"] for v in _validations(out)] == [0, 1, 2, 3]
