"""``raymeta adapt`` end to end on a local Ray instance: the user's text (a txt file, a directory of
jsonl files) becomes the SMLMT task and trains beside the recipe's tasks; the labelled rows pick
``best``, and a deliberately harmful run keeps step 0, the starting model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from raymeta.adapt import DOMAIN_TASK, adapt

from ..unit.test_adapt_inputs import WORDS, domain_text


def recipe(tmp_path: Path, data_dir: Path, val_file: Path, **model) -> str:
    """A small recipe: one general task (the mixed_data csv), 4 steps, validation every 2 (on the
    topics file; adapt --labelled replaces it with the labelled rows)."""
    from ..conftest import TINY_BERT
    from .conftest import validation_on

    cfg = {
        "name": "adapt-test", "seed": 0, "output_dir": str(tmp_path / "unused"),
        "data_dir": str(data_dir), "cache_dir": str(tmp_path / "cache"),
        "model": model or {"from_config": TINY_BERT},
        "tasks": [{"name": "cls", "type": "sequence_classification", "max_length": 24,
                   "source": {"kind": "files", "format": "csv",
                              "files": {"train": "${data_dir}/cls.csv"}}}],
        "meta": {"algorithm": "protonet", "steps": 4,
                 "episode": {"ways": 3, "shots": 2, "queries": 2}},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "checkpoint": {"every_steps": 1000, "keep_last": 1},
        "eval": {"validation": validation_on(val_file, every_steps=2, episodes=20)},
        "resources": {"torch_threads": 1},
    }
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def test_adapt_trains_on_a_directory_of_text_and_writes_a_run(ray_local, mixed_data, val_file,
                                                              tmp_path):
    d = tmp_path / "tickets"
    d.mkdir()
    lines = domain_text(tmp_path / "t.txt").read_text().splitlines()
    for part in range(2):  # two jsonl files: a directory reads every file of one type
        (d / f"part{part}.jsonl").write_text("".join(json.dumps({"body": t}) + "\n"
                                                     for t in lines[part::2]))
    rows = tmp_path / "few.csv"
    rows.write_text("body,label\n" + "".join(f"my {WORDS[c]} is broken {i},{WORDS[c]}\n"
                                             for c in range(3) for i in range(4)))
    res = adapt(str(d), output=str(tmp_path / "run"), labelled=str(rows), text_column="body",
                recipe=recipe(tmp_path, mixed_data, val_file), overwrite=False)
    out = Path(res.output)
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in metrics if r.get("kind") != "validation"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert set(steps[0]["loss"]) == {"cls", DOMAIN_TASK}  # the domain task trained
    assert all("mixture_entropy" in r for r in steps)  # the labelled rows steer the weights
    assert [r["step"] for r in metrics if r.get("kind") == "validation"] == [0, 2, 4]
    assert pq.read_table(out / "data" / "unlabelled.parquet").num_rows == len(lines)
    assert res.texts == len(lines) and res.sentences == len(lines)
    assert res.chosen_on == "the labelled rows" and Path(res.model).is_dir()
    card = (Path(res.model) / "README.md").read_text()
    assert "## Adapted to a domain" in card and f"{len(lines):,} texts" in card
    assert "few.csv" in card and "12 rows in 3 classes" in card
    assert lines[0] not in card  # names the source and its size, never its text
    assert res.summary().startswith("adapt: ")


def test_adapt_keeps_step_0_when_every_step_validates_worse(ray_local, mixed_data, val_file,
                                                            tmp_path, capsys):
    """A harmful run: the outer learning rate 1.0 wrecks MiniLM at its first step (its
    embeddings become noise), while the labelled rows (one topic word per class, repeated) are
    separated perfectly at step 0. no_harm must keep step 0."""
    from raymeta.cli import main

    text = domain_text(tmp_path / "t.txt")
    rows = tmp_path / "colours.csv"
    rows.write_text("text,label\n" + "".join(f"{w} {w} {w} number {i},{w}\n"
                                             for w in ("football", "guitar", "volcano")
                                             for i in range(6)))
    code = main(["adapt", "--unlabelled", str(text), "--labelled", str(rows), "--no-align",
                 "--recipe", recipe(tmp_path, mixed_data, val_file,
                                    name_or_path="offline:all-MiniLM-L6-v2"),
                 "--output", str(tmp_path / "run"), "--steps", "2", "optim.lr=1.0",
                 "optim.warmup_steps=0", "optim.max_grad_norm=null",
                 "eval.validation.every_steps=1", "eval.validation.episodes=40"])
    out = capsys.readouterr().out
    assert code == 0
    chosen = json.loads((tmp_path / "run" / "best" / "raymeta_best.json").read_text())
    assert chosen["step"] == 0, chosen
    assert "no step validated better than the starting model on the labelled rows" in out
