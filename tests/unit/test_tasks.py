"""The task data layer: every task type from a raw file to a loss that back-propagates,
bad data named by task/file/row, deterministic episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raymeta.config import EpisodeConfig, ModelConfig, TaskConfig
from raymeta.core.model import MetaModel
from raymeta.errors import DataError
from raymeta.tasks import load_task, sample_episode

from ..conftest import TINY_BERT


def spec(name, type_, fmt, files, **kw) -> TaskConfig:
    return TaskConfig.model_validate(
        {"name": name, "type": type_, "source": {"kind": "files", "format": fmt, "files": files,
                                                 **kw.pop("source", {})}, **kw}
    )


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return str(path)


SMALL = EpisodeConfig(ways=2, shots=2, queries=2, support_size=2, query_size=2)


def backprop(task, episode_cfg=SMALL):
    torch.manual_seed(0)
    model = MetaModel.from_config(ModelConfig(from_config=TINY_BERT), [(task.name, task.config.type,
                                                                        task.num_labels)])
    ep = task.episode(episode_cfg, seed=0, step=0)
    loss, _ = model(task.name, ep.support)
    loss.backward()
    grads = [p.grad for p in model.shared_named_parameters().values() if p.grad is not None]
    assert torch.isfinite(loss) and loss.item() > 0
    assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the shared encoder"
    return ep


# ----------------------------------------------------------------------------- four types


def test_sequence_classification_single_and_pair(tmp_path, tokenizer):
    rows = [(f"sentence number {i}", f"other {i}", "pos" if i % 2 else "neg") for i in range(12)]
    f = write_csv(tmp_path / "pairs.csv", ["premise", "hypothesis", "y"], rows)
    t = spec("pairs", "sequence_classification", "csv", {"train": f},
             columns={"text": "premise", "text_pair": "hypothesis", "label": "y"})
    task = load_task(t, tokenizer, str(tmp_path))
    assert task.labels == ["neg", "pos"]
    ids = task.features["train"][0]["input_ids"]
    assert ids.count(tokenizer.sep_token_id) == 2  # a sentence pair: [CLS] a [SEP] b [SEP]
    ep = backprop(task)
    assert sorted(set(ep.support["labels"].tolist())) == [0, 1]


def test_token_classification_conll_aligns_subwords(tmp_path, tokenizer):
    text = "Barack\tB-person\nObama\tI-person\nvisited\tO\nKubernetesville\tB-location\n\n" * 6
    (tmp_path / "ner.conll").write_text(text)
    task = load_task(spec("ner", "token_classification", "conll",
                          {"train": str(tmp_path / "ner.conll")}),
                     tokenizer, str(tmp_path))
    assert task.labels[0] == "O"
    f = task.features["train"][0]
    words = tokenizer.convert_ids_to_tokens(f["input_ids"])
    labelled = [(w, task.labels[lab]) for w, lab in zip(words, f["labels"]) if lab != -100]
    # one label per word, on its first sub-word; continuation pieces are -100
    assert [lab for _, lab in labelled] == ["B-person", "I-person", "O", "B-location"]
    assert len(words) > 6 and sum(1 for x in f["labels"] if x == -100) >= 3
    backprop(task)


def test_extractive_qa_windows_and_spans(tmp_path, tokenizer):
    filler = " ".join(f"word{i}" for i in range(120))
    context = f"{filler} The capital of France is Paris. {filler}"
    start = context.index("Paris")
    data = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": str(i), "question": "What is the capital of France?",
         "answers": [{"text": "Paris", "answer_start": start}]}
        for i in range(4)]}]}]}
    (tmp_path / "qa.json").write_text(json.dumps(data))
    t = spec("qa", "extractive_qa", "squad", {"train": str(tmp_path / "qa.json")}, max_length=64,
             stride=16)
    task = load_task(t, tokenizer, str(tmp_path))
    c = task.counts["train"]
    # long context -> windows
    assert c["windows"] > 4 and c["dropped"] == c["windows"] - len(task.features["train"])
    for f in task.features["train"]:
        s, e = f["start_positions"], f["end_positions"]
        assert tokenizer.decode(f["input_ids"][s:e + 1]).strip() == "paris"
    backprop(task)


def test_multiple_choice_jsonl(tmp_path, tokenizer):
    rows = [{"q": f"prompt {i}", "a": "yes", "b": "no", "c": "maybe",
             "gold": i % 3} for i in range(6)]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    t = spec("mc", "multiple_choice", "jsonl", {"train": str(tmp_path / "mc.jsonl")},
             columns={"question": "q", "choices": ["a", "b", "c"], "label": "gold"})
    task = load_task(t, tokenizer, str(tmp_path))
    ep = backprop(task)
    assert ep.support["input_ids"].shape[:2] == (2, 3)


# ----------------------------------------------------------------------------- bad data


def test_missing_column_names_task_and_file(tmp_path, tokenizer):
    f = write_csv(tmp_path / "a.csv", ["sentence", "y"], [("a", 1), ("b", 0)])
    t = spec("sent", "sequence_classification", "csv", {"train": f}, columns={"label": "y"})
    with pytest.raises(DataError, match=r"task 'sent'.*missing column 'text'"):
        load_task(t, tokenizer, str(tmp_path))
    t = spec("sent", "sequence_classification", "csv", {"train": f}, columns={"text": "sentnce",
                                                                              "label": "y"})
    with pytest.raises(DataError, match=r"task 'sent', file .*a.csv: missing column 'sentnce'"):
        load_task(t, tokenizer, str(tmp_path))


def test_label_outside_label_set_names_row(tmp_path, tokenizer):
    f = write_csv(tmp_path / "l.csv", ["text", "label"], [("a", "pos"), ("b", "neg"), ("c", "meh")])
    t = spec("sent", "sequence_classification", "csv", {"train": f}, labels=["pos", "neg"])
    with pytest.raises(DataError) as e:
        load_task(t, tokenizer, str(tmp_path))
    assert str(e.value).startswith(f"task 'sent', file {f}, row 3: label 'meh' is not in the label "
                                   "set")


def test_empty_split(tmp_path, tokenizer):
    f = write_csv(tmp_path / "e.csv", ["text", "label"], [("a", "x")])
    g = tmp_path / "empty.csv"
    g.write_text("text,label\n")
    t = spec("e", "sequence_classification", "csv", {"train": f, "test": str(g)})
    with pytest.raises(DataError, match=r"task 'e', file .*empty.csv: split 'test' is empty"):
        load_task(t, tokenizer, str(tmp_path))
    t = spec("e", "sequence_classification", "csv", {"train": f}, include_labels=["y"])
    with pytest.raises(DataError, match=r"task 'e': split 'train' is empty after include_labels"):
        load_task(t, tokenizer, str(tmp_path))


def test_answer_span_mismatch(tmp_path, tokenizer):
    data = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "1", "question": "q?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "2", "question": "q?", "answers": [{"text": "France", "answer_start": 3}]}]}]}]}
    (tmp_path / "qa.json").write_text(json.dumps(data))
    want = (r"task 'qa', file .*qa.json, row 2: answer 'France' does not match its context at "
            r"character 3")
    with pytest.raises(DataError, match=want):
        load_task(spec("qa", "extractive_qa", "squad", {"train": str(tmp_path / "qa.json")}),
                  tokenizer, str(tmp_path))


def test_conll_token_tag_mismatch(tmp_path, tokenizer):
    (tmp_path / "bad.conll").write_text("Paris\tB-loc\nis\tO\nnice\n\n")
    with pytest.raises(DataError,
                       match=r"task 'ner', file .*bad.conll, row 3: .*token/tag length mismatch"):
        load_task(spec("ner", "token_classification", "conll",
                       {"train": str(tmp_path / "bad.conll")}), tokenizer, str(tmp_path))


def test_json_token_tag_mismatch(tmp_path, tokenizer):
    rows = [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a", "b"], "tags": ["O"]}]
    (tmp_path / "n.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"row 2: token/tag length mismatch: 2 tokens, 1 tags"):
        load_task(spec("ner", "token_classification", "jsonl",
                       {"train": str(tmp_path / "n.jsonl")}), tokenizer, str(tmp_path))


def test_missing_file(tmp_path, tokenizer):
    t = spec("gone", "sequence_classification", "csv", {"train": "${data_dir}/nope.csv"})
    with pytest.raises(DataError, match=r"task 'gone', file .*nope.csv: file not found"):
        load_task(t, tokenizer, str(tmp_path))


def test_rows_dropped_for_length_are_counted(tmp_path, tokenizer, caplog):
    filler = " ".join(f"w{i}" for i in range(200))
    data = {"data": [{"title": "t", "paragraphs": [{"context": f"{filler} Paris", "qas": [
        {"id": "1", "question": "q?", "answers": [{"text": "Paris",
                                                   "answer_start": len(filler) + 1}]}]}]}]}
    (tmp_path / "qa.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        task = load_task(spec("qa", "extractive_qa", "squad", {"train": str(tmp_path / "qa.json")},
                              max_length=48, stride=8),
                         tokenizer, str(tmp_path))
    assert task.counts["train"]["dropped"] > 0
    assert (f"{task.counts['train']['dropped']} rows (QA: context windows) dropped for length"
            in caplog.text)


def test_features_are_cached(tmp_path, tokenizer):
    f = write_csv(tmp_path / "c.csv", ["text", "label"], [(f"t{i}", i % 2) for i in range(8)])
    t = spec("c", "sequence_classification", "csv", {"train": f})
    a = load_task(t, tokenizer, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    cached = list((tmp_path / "cache" / "features" / "c").iterdir())
    assert len(cached) == 1 and (cached[0] / "counts.json").is_file()
    b = load_task(t, tokenizer, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert a.features["train"]["input_ids"] == b.features["train"]["input_ids"]
    assert b.features["train"].cache_files  # memory-mapped from the cache, not re-tokenised


def test_tokenising_never_hashes_the_tokenizer(tmp_path, tokenizer, monkeypatch):
    """``datasets`` names a ``map`` result by dill-hashing its function unless it is given a name;
    for a tokenising function that pickles the tokenizer it closes over (twice per split: 85% of
    loading a small task). Every task type names its features from the features key instead."""
    import datasets.arrow_dataset
    import datasets.fingerprint

    hashed: list[str] = []
    real = datasets.fingerprint.update_fingerprint

    # the function a map applies is one of transform_args
    def spy(fingerprint, transform, transform_args):
        hashed.extend(getattr(x, "__qualname__", "") for x in [transform, *transform_args.values()])
        return real(fingerprint, transform, transform_args)

    for module in (datasets.fingerprint, datasets.arrow_dataset):
        monkeypatch.setattr(module, "update_fingerprint", spy)
    f = write_csv(tmp_path / "c.csv", ["text", "label"], [(f"t{i}", i % 2) for i in range(8)])
    (tmp_path / "ner.conll").write_text("Ann\tB-person\nran\tO\n\n" * 4)
    ctx = "The capital of France is Paris."
    (tmp_path / "qa.json").write_text(json.dumps({"data": [{"title": "t",
                                                            "paragraphs": [{"context": ctx, "qas": [
        {"id": str(i), "question": "Capital?", "answers": [{"text": "Paris",
                                                            "answer_start": ctx.index("Paris")}]}
        for i in range(4)]}]}]}))
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps({"q": f"p{i}", "a": "y", "b": "n",
                                                             "gold": i % 2})
                                                  for i in range(4)))
    for t in (spec("c", "sequence_classification", "csv", {"train": f}),
              spec("ner", "token_classification", "conll", {"train": str(tmp_path / "ner.conll")}),
              spec("qa", "extractive_qa", "squad", {"train": str(tmp_path / "qa.json")}),
              spec("mc", "multiple_choice", "jsonl", {"train": str(tmp_path / "mc.jsonl")},
                   columns={"question": "q", "choices": ["a", "b"], "label": "gold"})):
        task = load_task(t, tokenizer, str(tmp_path), cache_dir=str(tmp_path / "cache"))
        assert len(task.features["train"]) > 0
    assert hashed, ("the spy saw no datasets transform at all: it no longer watches the right "
                    "function")
    assert not [h for h in hashed if "tokenize" in h], hashed


# ----------------------------------------------------------------------------- episodes


def test_episode_is_deterministic_and_k_per_class(tmp_path, tokenizer):
    rows = [(f"text {i}", f"c{i % 6}") for i in range(60)]
    f = write_csv(tmp_path / "e.csv", ["text", "label"], rows)
    task = load_task(spec("e", "sequence_classification", "csv", {"train": f}), tokenizer,
                     str(tmp_path))
    cfg = EpisodeConfig(ways=3, shots=2, queries=3)
    a, b, c = task.episode(cfg, 7, 5), task.episode(cfg, 7, 5), task.episode(cfg, 7, 6)
    assert (a.support_rows == b.support_rows and a.query_rows == b.query_rows
            and a.classes == b.classes)
    assert (a.support_rows, a.classes) != (c.support_rows, c.classes)
    assert torch.equal(a.support["labels"], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.bincount(a.query["labels"]).tolist() == [3, 3, 3]
    gold = task.class_ids("train")
    assert [a.classes[j] for j in a.support["labels"].tolist()] == gold[a.support_rows].tolist()


@settings(max_examples=120, deadline=None)
@given(
    n_classes=st.integers(2, 12), per_class=st.integers(1, 15), ways=st.one_of(st.none(),
                                                                               st.integers(2, 12)),
    shots=st.integers(1, 5), queries=st.integers(1, 5), seed=st.integers(0, 2**31),
       step=st.integers(0, 10**6),
)
def test_sampler_properties(n_classes, per_class, ways, shots, queries, seed, step):
    class_ids = np.repeat(np.arange(n_classes), per_class)
    np.random.default_rng(0).shuffle(class_ids)
    cfg = EpisodeConfig(ways=ways, shots=shots, queries=queries)
    try:
        s, q, classes = sample_episode(len(class_ids), class_ids, cfg, seed, "t", step)
    except ValueError as e:
        assert per_class < shots + queries  # only refuses when no 2 classes have enough rows
        assert "shots + queries" in str(e)
        return
    want = n_classes if ways is None else min(ways, n_classes)
    assert len(classes) == want and len(set(classes)) == want
    assert not set(s) & set(q)  # support and query are disjoint
    assert len(s) == want * shots and len(q) == want * queries
    for c in classes:
        assert sum(class_ids[i] == c for i in s) == shots
    assert sample_episode(len(class_ids), class_ids, cfg, seed, "t", step) == (s, q, classes)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), support=st.integers(1, 20), query=st.integers(1, 20),
       seed=st.integers(0, 2**31))
def test_sampler_without_classes(n, support, query, seed):
    cfg = EpisodeConfig(support_size=support, query_size=query)
    if n < support + query:
        with pytest.raises(ValueError, match="support_size"):
            sample_episode(n, None, cfg, seed, "t", 0)
        return
    s, q, classes = sample_episode(n, None, cfg, seed, "t", 0)
    assert classes is None and len(s) == support and len(q) == query and not set(s) & set(q)
    assert all(0 <= i < n for i in s + q)


def test_hub_source_unreachable_is_one_line(monkeypatch):
    """The hub is the normal source on a cluster; offline, it must fail with one clear line."""
    from raymeta.tasks import load_raw

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t = TaskConfig.model_validate({"name": "h", "type": "sequence_classification",
                                   "source": {"kind": "hub", "dataset": "SetFit/sst2"}})
    with pytest.raises(DataError,
                       match=r"^task 'h': hub dataset 'SetFit/sst2' cannot be loaded: [^\n]+$"):
        load_raw(t, ".", None)


# --------------------------------------------------------------------------- paths in task YAML
# files, unreadable CSVs


def _task_yaml(folder, train_path, name="mine"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t.yaml").write_text(f"name: {name}\ntype: sequence_classification\n"
                                   f"source: {{kind: files, format: csv, files: {{train: "
                                   f"'{train_path}'}}}}\n")
    return str(folder / "t.yaml")


def test_relative_path_in_a_task_yaml_starts_at_its_folder(tmp_path, monkeypatch):
    from raymeta.tasks import load_raw, task_config

    (tmp_path / "proj" / "data").mkdir(parents=True)
    write_csv(tmp_path / "proj" / "data" / "train.csv", ["text", "label"], [["hi", "a"],
                                                                            ["yo", "b"]])
    yaml_file = _task_yaml(tmp_path / "proj", "data/train.csv")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the YAML's folder
    raw = load_raw(task_config(yaml_file), data_dir="unused")
    assert raw["train"]["text"] == ["hi", "yo"]
    assert raw["train"]["_file"][0] == str(tmp_path / "proj" / "data" / "train.csv")


def test_relative_path_in_an_experiment_configs_inline_task_starts_at_its_folder(tmp_path,
                                                                                 monkeypatch):
    import yaml

    from raymeta.config import load_config
    from raymeta.tasks import load_raw

    (tmp_path / "exp" / "data").mkdir(parents=True)
    write_csv(tmp_path / "exp" / "data" / "train.csv", ["text", "label"],
              [["hi", "a"], ["yo", "b"]])
    entry = {"name": "mine", "type": "sequence_classification",
             "source": {"kind": "files", "format": "csv", "files": {"train": "data/train.csv"}}}
    (tmp_path / "exp" / "e.yaml").write_text(yaml.safe_dump({"tasks": [entry, "bbc_news"]}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(tmp_path / "exp" / "e.yaml"))
    assert load_raw(cfg.tasks[0], data_dir="unused")["train"]["text"] == ["hi", "yo"]
    # a ready-made task (${data_dir}) is as before
    assert "base_dir" not in cfg.tasks[1].source.model_dump()
    # a saved config.yaml reloads to the same files
    again = type(cfg).model_validate(cfg.model_dump(mode="json"))
    assert again.tasks[0].source.base_dir == str(tmp_path / "exp")


def test_missing_file_names_the_path_as_written_and_as_resolved(tmp_path):
    from raymeta.tasks import load_raw, task_config

    with pytest.raises(DataError) as e:
        load_raw(task_config(_task_yaml(tmp_path, "data/gone.csv")), data_dir="unused")
    msg = str(e.value)
    assert f"file {tmp_path}/data/gone.csv: file not found" in msg and "'data/gone.csv'" in msg, msg
    assert "RAYMETA_DATA_DIR" not in msg  # data_dir plays no part in this path
    with pytest.raises(DataError) as e:
        load_raw(task_config(_task_yaml(tmp_path, "${data_dir}/gone.csv")),
                 data_dir=str(tmp_path / "dd"))
    msg = str(e.value)
    assert (f"file {tmp_path}/dd/gone.csv: file not found" in msg
            and "'${data_dir}/gone.csv'" in msg), msg
    assert "set data_dir= or RAYMETA_DATA_DIR" in msg


def test_empty_csv_says_so(tmp_path):
    (tmp_path / "e.csv").write_text("")
    t = spec("mine", "sequence_classification", "csv", {"train": str(tmp_path / "e.csv")})
    with pytest.raises(DataError, match=r"file .*e\.csv: the file is empty: no header, no rows"):
        load_raw_(t, tmp_path)


def test_ragged_csv_names_the_row_and_field_counts(tmp_path):
    (tmp_path / "r.csv").write_text("text,label\nfine,a\nalso fine,b\nbad,b,extra\nok,a\n")
    t = spec("mine", "sequence_classification", "csv", {"train": str(tmp_path / "r.csv")})
    with pytest.raises(DataError) as e:
        load_raw_(t, tmp_path)
    assert str(e.value).startswith(f"task 'mine', file {tmp_path}/r.csv, row 3: 3 fields, the "
                                   "header has 2 (line 4"), e.value


def load_raw_(t, tmp_path):
    from raymeta.tasks import load_raw

    return load_raw(t, data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_check_tasks_finds_a_bad_label_without_a_tokenizer(tmp_path):
    from raymeta.tasks import check_tasks

    write_csv(tmp_path / "d.csv", ["text", "label"], [["fine", "a"], ["bad", "zzz"]])
    good = spec("good", "sequence_classification", "csv", {"train": str(tmp_path / "d.csv")})
    # labels inferred: zzz is one of them
    check_tasks([good], str(tmp_path), str(tmp_path / "cache"))
    bad = spec("bad", "sequence_classification", "csv", {"train": str(tmp_path / "d.csv")},
               labels=["a", "b"])
    with pytest.raises(DataError,
                       match=r"task 'bad', file .*d\.csv, row 2: label 'zzz' is not in the label "
                       r"set"):
        check_tasks([good, bad], str(tmp_path), str(tmp_path / "cache"))
