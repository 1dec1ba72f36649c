"""``raymeta adapt``'s inputs, without Ray: every bad input is one line naming the argument and the
file, exit 2, before anything is written; the config it builds (the domain SMLMT task, the labelled
rows as validation task and alignment target)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymeta.adapt import DOMAIN_TASK, LABELLED_TASK, adapt_config, validation_sizes
from raymeta.cli import main

WORDS = ["invoice", "refund", "password", "delivery", "account", "payment", "printer", "screen"]


def domain_text(path: Path, sentences: int = 240) -> Path:
    """Support-ticket-like sentences: each of 8 domain words in 30 of them."""
    rows = [f"my {WORDS[i % 8]} problem number {i} is still open today" for i in range(sentences)]
    path.write_text("\n".join(rows) + "\n")
    return path


def labelled(path: Path, per_class: int = 4, classes: int = 3) -> Path:
    path.write_text("text,label\n" + "".join(f"ticket about {WORDS[c]} {i},c{c}\n"
                                              for c in range(classes) for i in range(per_class)))
    return path


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["adapt", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case, expect", [
    ("empty", r"--unlabelled .*empty\.txt: the file is empty"),
    ("blank", r"--unlabelled .*blank\.csv: no text in column 'text' \(every row is empty\)"),
    ("tiny", r"--unlabelled .*tiny\.txt: too little text for SMLMT: 3 distinct sentences of 4-64 "
             r"words, in which 0 word\(s\) occur in at least 10 sentences; a 5-way episode "
             r"needs 5"),
    ("column", r"--unlabelled .*tickets\.csv: no column 'text' \(the file has: body\)"),
    ("latin1", r"--unlabelled .*latin1\.txt: not UTF-8 text \(byte 0xe9 at line 2\)"),
    ("one_class", r"--labelled .*one\.csv: the label column 'label' has one class \('c0'\)"),
    ("one_row", r"--labelled .*few\.csv: every class needs at least 2 rows .* 'c2' \(1\)"),
])
def test_each_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, expect):
    import re

    text = domain_text(tmp_path / "text.txt")
    args = ["--unlabelled", str(text)]
    if case == "empty":
        (tmp_path / "empty.txt").write_text("")
        args = ["--unlabelled", str(tmp_path / "empty.txt")]
    elif case == "blank":
        (tmp_path / "blank.csv").write_text('text,id\n"",1\n"  ",2\n')
        args = ["--unlabelled", str(tmp_path / "blank.csv")]
    elif case == "tiny":
        (tmp_path / "tiny.txt").write_text("one short line here\nanother short line here\n"
                                           "a third short line here\n")
        args = ["--unlabelled", str(tmp_path / "tiny.txt")]
    elif case == "column":
        (tmp_path / "tickets.csv").write_text("body\nhello there\n")
        args = ["--unlabelled", str(tmp_path / "tickets.csv")]
    elif case == "latin1":
        (tmp_path / "latin1.txt").write_bytes("fine line\ncaf\xe9 line\n".encode("latin-1"))
        args = ["--unlabelled", str(tmp_path / "latin1.txt")]
    elif case == "one_class":
        (tmp_path / "one.csv").write_text("text,label\na b,c0\nc d,c0\n")
        args += ["--labelled", str(tmp_path / "one.csv")]
    elif case == "one_row":
        (tmp_path / "few.csv").write_text("text,label\na,c0\nb,c0\nc,c1\nd,c1\ne,c2\n")
        args += ["--labelled", str(tmp_path / "few.csv")]
    out = tmp_path / "out"
    code, err = run(capsys, *args, "--output", str(out))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(expect, err), err
    assert not out.exists()


def test_the_config_adds_the_domain_task_and_validates_on_the_labelled_rows(tmp_path):
    cfg = adapt_config(str(tmp_path / "run"), str(tmp_path / "u.parquet"),
                       labelled_file=str(tmp_path / "l.parquet"), labelled_counts=[8, 8, 9],
                       init="offline:all-MiniLM-L6-v2", general=["bbc_news"], steps=7)
    assert [t.name for t in cfg.tasks] == ["bbc_news", DOMAIN_TASK]
    domain = cfg.tasks[-1]
    assert domain.source.kind == "smlmt" and domain.source.min_count == 10
    v = cfg.eval.validation
    assert [t["name"] for t in v.tasks] == [LABELLED_TASK] and v.selection == "no_harm"
    assert (v.ways, v.shots, v.queries) == (3, 4, 4) and cfg.meta.steps == 7
    w = cfg.meta.weighting
    assert w.rule == "alignment" and w.target == v.tasks and w.shots == [4]
    assert w.max_kl == pytest.approx(0.6931, abs=1e-4)
    # --no-align: the rows only choose best; without --labelled, the recipe's validation
    fixed = adapt_config(str(tmp_path / "r2"), str(tmp_path / "u.parquet"),
                         labelled_file=str(tmp_path / "l.parquet"), labelled_counts=[2, 3],
                         align=False)
    assert fixed.meta.weighting.rule == "fixed" and fixed.eval.validation.shots == 1
    plain = adapt_config(str(tmp_path / "r3"), str(tmp_path / "u.parquet"),
                         overrides=["meta.steps=3"])
    assert [t["use"] for t in plain.eval.validation.tasks] == ["chatterbot_topics_val"]
    assert plain.meta.steps == 3 and plain.meta.weighting.rule == "fixed"
    # the saved config reloads as the same run
    from raymeta.config import load_config

    again = load_config(data=json.loads(cfg.model_dump_json()))
    assert again == cfg


@pytest.mark.parametrize("counts, sizes", [([2, 2], (2, 1, 1)), ([5, 9, 30], (3, 2, 3)),
                                           ([40] * 12, (10, 4, 10))])
def test_validation_episodes_split_every_class_into_support_and_query(counts, sizes):
    s = validation_sizes(counts)
    assert (s["ways"], s["shots"], s["queries"]) == sizes
    assert s["shots"] + s["queries"] <= min(counts)


def test_the_benchmark_pool_never_holds_a_text_of_the_task():
    """benchmarks/adapt_families.py: the unlabelled pool and the labelled task (its K-shot and test
    rows) share no text, duplicates (up to case and spacing) included."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "adapt_families.py"
    spec = importlib.util.spec_from_file_location("adapt_families", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [(f"news story {i % 150}", str(i % 4)) for i in range(400)]  # each text 2-3 times
    rows += [(f"NEWS  story {i}", "1") for i in range(20)]  # the same texts, other case and spaces
    pool, train, test = mod.split_family(rows, pool=100, seed=3)
    task = {mod.norm(t) for t, _ in train + test}
    assert len(pool) >= 100 and not {mod.norm(t) for t in pool} & task
    assert len(pool) + len(train) + len(test) == len(rows)
    again = mod.split_family(rows, pool=100, seed=3)
    assert again == (pool, train, test)  # seeded


def test_a_family_with_its_own_test_rows_keeps_them_whole_and_out_of_the_pool():
    """Banking77's shape: the test rows are the family's own (kept whole, as published figures
    are); the pool is drawn from the train rows, never a text that is also a test row."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "adapt_families.py"
    spec = importlib.util.spec_from_file_location("adapt_families", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [(f"query {i}", str(i % 7)) for i in range(300)]
    test = [(f"Query  {i}", str(i % 7)) for i in range(0, 300, 3)]  # a third of train's texts
    pool, train, got_test = mod.split_family(rows, pool=150, seed=1, test=test)
    assert got_test == test and len(pool) == 150 and len(pool) + len(train) == len(rows)
    assert not {mod.norm(t) for t in pool} & {mod.norm(t) for t, _ in test + train}


def test_the_tsdae_baseline_deletes_six_words_in_ten_seeded_and_keeps_one():
    """benchmarks/tsdae.py's noise (TSDAE's deletion, ratio 0.6): seeded, about 60% of the words
    gone, never a text emptied."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "tsdae.py"
    spec = importlib.util.spec_from_file_location("tsdae", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    texts = [" ".join(f"w{i}_{j}" for j in range(20)) for i in range(200)] + ["one", "a b"]
    noisy = mod.delete_words(texts, 0.6, seed=5)
    assert noisy == mod.delete_words(texts, 0.6, seed=5) != mod.delete_words(texts, 0.6, seed=6)
    kept = sum(len(t.split()) for t in noisy[:200]) / (200 * 20)
    assert 0.35 < kept < 0.45 and all(n.split() for n in noisy)
    assert all(set(n.split()) <= set(t.split()) for n, t in zip(noisy, texts))
