"""SMLMT tasks (Bansal et al. 2020): masked-word classes over other sources' text, as ordinary
episodes (no Ray)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
from rich.console import Console

from raymeta.config import EpisodeConfig, TaskConfig, check_task
from raymeta.errors import ConfigError, DataError
from raymeta.tasks import load_task, task_config
from raymeta.tasks import smlmt as sm

WORDS = ["apple", "river", "guitar", "planet", "coffee", "garden"]
EP = EpisodeConfig(ways=4, shots=2, queries=3)


def corpus(path, words=WORDS, n=30):
    """Each row: two sentences; the first names two vocabulary words (one capitalised), the second
    repeats one."""
    lines = ["text,label"]
    for i in range(n):
        a, b = words[i % len(words)], words[(i * 5 + 1) % len(words)]
        b = b if b != a else words[(i + 2) % len(words)]
        lines.append(f'"{a.capitalize()} and {b} at {i}. We had {a} at {i} too!",x')
    path.write_text("\n".join(lines) + "\n")
    return path


def spec(path, name="sm", **source) -> TaskConfig:
    src = {"kind": "smlmt", "from": [{"source": {"kind": "files", "format": "csv",
                                                 "files": {"train": str(path)}}}],
           "min_count": 5, "min_word_length": 5, **source}
    return check_task({"name": name, "type": "sequence_classification", "max_length": 32,
                       "source": src}, origin="test")


def originals(path) -> set[str]:
    text = datasets.load_dataset("csv", data_files=str(path), split="train")["text"]
    return {s.lower() for t in text for s in sm.split_sentences(t)}


def has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def task(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("smlmt")
    path = corpus(d / "c.csv")
    return load_task(spec(path), tokenizer, str(d), str(d / "cache")), path


def test_mask_word_masks_every_whole_word_occurrence_case_insensitively():
    s = "Bank banks the bank, BANK's bank2 embankment Bank."
    assert sm.mask_word(s, "bank", "#") == "# banks the #, #'s bank2 embankment #."
    assert sm.sentence_words("The Bank of 2 banks, run by bankers in 1999",
                             spec("x.csv").source) == {"banks", "bankers"}


def test_sentences_split_after_end_marks_quotes_and_line_breaks():
    text = 'It rained. "We stayed in!" she said.\nNew line? Yes (mostly.) Done'
    assert sm.split_sentences(text) == ["It rained.", '"We stayed in!"', "she said.", "New line?",
                                        "Yes (mostly.)", "Done"]


def test_rows_never_show_their_word_and_labels_are_the_masked_words(task, tokenizer):
    t, path = task
    assert t.labels == sorted(WORDS)
    raw = t.raw["train"]
    sentences = originals(path)
    for text, word in zip(raw["text"], raw["label"]):
        assert tokenizer.mask_token in text and not has_word(text, word)
        # putting the label back where the mask is gives a sentence of the corpus: the label is the
        # masked word
        assert text.replace(tokenizer.mask_token, word).lower() in sentences
    # a sentence with two vocabulary words gives a row for each, each with only its own word masked
    texts = list(raw["text"])
    assert "[MASK] and river at 0." in texts and "Apple and [MASK] at 0." in texts


def test_episodes_never_show_the_label_word(task, tokenizer):
    t, _ = task
    for step in range(5):
        ep = t.episode(EP, seed=3, step=step)
        assert len(ep.classes) == 4
        for rows, batch in ((ep.support_rows, ep.support), (ep.query_rows, ep.query)):
            for row, local in zip(rows, batch["labels"].tolist()):
                word = t.labels[ep.classes[local]]
                decoded = tokenizer.decode(t.features["train"][row]["input_ids"])
                assert "[MASK]" in decoded and not has_word(decoded, word)
                assert t.raw["train"][row]["label"] == word


def test_same_seed_same_episode_other_step_or_seed_another(task):
    t, _ = task
    a, b = t.episode(EP, seed=3, step=0), t.episode(EP, seed=3, step=0)
    assert (a.support_rows == b.support_rows and a.query_rows == b.query_rows
            and a.classes == b.classes)
    assert all(bool((a.support[k] == b.support[k]).all()) for k in a.support)
    assert t.episode(EP, seed=3, step=1).support_rows != a.support_rows
    assert t.episode(EP, seed=4, step=0).support_rows != a.support_rows


def test_vocabulary_filters(tmp_path, tokenizer):
    path = corpus(tmp_path / "c.csv")
    # vocab_size keeps the most frequent words; ties break alphabetically
    t = load_task(spec(path, vocab_size=3, exclude_words=["Apple"]), tokenizer, str(tmp_path))
    counts = {w: sum(w in s for s in originals(path)) for w in WORDS if w != "apple"}
    want = sorted(sorted(counts, key=lambda w: (-counts[w], w))[:3])
    assert t.labels == want and "apple" not in t.labels
    # stop words ("and", "at", "we", "had", "too") and numbers never become classes, whatever
    # min_word_length
    t = load_task(spec(path, min_word_length=1, min_count=1), tokenizer, str(tmp_path))
    assert t.labels == sorted(WORDS)
    t = load_task(spec(path, min_word_length=6), tokenizer, str(tmp_path))
    assert t.labels == sorted(w for w in WORDS if len(w) >= 6)
    # max_sentences_per_word caps the rows of a word (a seeded subsample)
    t = load_task(spec(path, max_sentences_per_word=6), tokenizer, str(tmp_path))
    assert max(np.bincount(t.class_ids("train"))) == 6


def test_too_few_words_is_one_line_naming_the_task_count_and_setting(tmp_path, tokenizer):
    path = corpus(tmp_path / "c.csv", words=WORDS[:3])
    t = load_task(spec(path, name="tiny_smlmt"), tokenizer, str(tmp_path))
    with pytest.raises(DataError) as e:
        t.episode(EpisodeConfig(ways=5, shots=2, queries=2), seed=0, step=0)
    msg = str(e.value)
    assert ("\n" not in msg and msg.startswith("task 'tiny_smlmt'") and "found 3 word(s)" in msg
            and "5-way" in msg)
    assert "source.from" in msg
    t = load_task(spec(path, name="capped", max_sentences_per_word=3), tokenizer, str(tmp_path))
    with pytest.raises(DataError,
                       match=r"found 0 word\(s\).*raise source.max_sentences_per_word \(now 3\) to "
                       r"at least 4"):
        t.episode(EpisodeConfig(ways=2, shots=2, queries=2), seed=0, step=0)
    with pytest.raises(DataError,
                       match=r"task 'rare'.*no word occurs in source.min_count=1000 "
                       r"sentences.*lower source.min_count"):
        load_task(spec(path, name="rare", min_count=1000), tokenizer, str(tmp_path))


def test_too_few_words_exits_2_through_the_cli(tmp_path, capsys):
    from raymeta.cli import main

    path = corpus(tmp_path / "c.csv", words=WORDS[:3])
    (tmp_path / "t.yaml").write_text(spec(path, name="cli_smlmt").model_dump_json())  # JSON is YAML
    assert main(["tasks", "show", str(tmp_path / "t.yaml"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task 'cli_smlmt'" in err[0] and "found 3 word(s)" in err[0]


def test_rows_are_built_once_and_cached(tmp_path, tokenizer, monkeypatch):
    path = corpus(tmp_path / "c.csv")
    first = load_task(spec(path), tokenizer, str(tmp_path), str(tmp_path / "cache"))
    assert list((tmp_path / "cache" / "smlmt" / "sm").iterdir())

    def boom(*a, **k):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(sm, "build_rows", boom)
    again = load_task(spec(path), tokenizer, str(tmp_path), str(tmp_path / "cache"))
    assert again.raw["train"]["text"] == first.raw["train"]["text"]
    with pytest.raises(AssertionError, match="rebuilt"):  # another setting is another key
        load_task(spec(path, vocab_size=4), tokenizer, str(tmp_path), str(tmp_path / "cache"))


def test_placeholder_for_tokenizers_without_a_mask_token(tmp_path):
    raw = {"train": datasets.Dataset.from_dict({"text": [f"the {sm.MASK}'s rise", f"x{sm.MASK} y"],
                                                "label": ["a", "b"]})}
    no_mask = SimpleNamespace(mask_token=None)
    out = sm.apply_mask_token(raw, no_mask, spec("x.csv", placeholder="<word>"))
    assert out["train"]["text"] == ["the <word> 's rise", "x <word> y"]
    out = sm.apply_mask_token(raw, SimpleNamespace(mask_token="[MASK]"), spec("x.csv"))
    assert out["train"]["text"][0] == "the [MASK] 's rise"


def test_config_errors():
    with pytest.raises(ConfigError, match="needs 'from'"):
        check_task({"name": "s", "type": "sequence_classification", "source": {"kind": "smlmt"}},
                   origin="t")
    with pytest.raises(ConfigError, match="makes a sequence_classification task"):
        check_task({"name": "s", "type": "token_classification", "source": {"kind": "smlmt",
                                                                            "from": ["bbc_news"]}},
                      origin="t")


def test_an_smlmt_input_must_be_text_not_another_smlmt_task(tmp_path, tokenizer):
    nested = check_task({"name": "n", "type": "sequence_classification",
                            "source": {"kind": "smlmt", "from": ["smlmt_starter"]}}, origin="t")
    with pytest.raises(DataError,
                       match="source.from\\[0\\] \\('smlmt_starter'\\) is itself an SMLMT task"):
        load_task(nested, tokenizer, str(tmp_path))


def test_ready_made_starter_task_loads_offline_and_shows_the_mask(tokenizer, feature_cache):
    from raymeta.config import ModelConfig
    from raymeta.show import show_tasks

    t = load_task(task_config("smlmt_starter"), tokenizer, "unused", feature_cache)
    assert len(t.labels) == 300 and "test" in t.features
    ep = t.episode(EpisodeConfig(ways=5, shots=2, queries=2), seed=0, step=0)
    for row, local in zip(ep.query_rows, ep.query["labels"].tolist()):
        assert not has_word(tokenizer.decode(t.features["train"][row]["input_ids"]),
                            t.labels[ep.classes[local]])
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    show_tasks([task_config("smlmt_starter")], model=ModelConfig(), data_dir="unused",
               cache_dir=feature_cache, seed=0,
               episode=EpisodeConfig(ways=5, shots=2, queries=2), console=console)
    out = console.export_text()
    assert "SMLMT (masked-word classes) over the text of bbc_news" in out
    assert "episode seed=0 step=0: 5-way" in out and "[MASK]" in out


def test_shared_task_reads_only_meta_training_text():
    held_out = {"ag_news", "huffpost", "fewrel", "chatterbot_topics"}
    used = set(task_config("smlmt_shared").source.corpus)
    assert used == {"clinc150", "banking77", "sst2", "trec"} and not used & held_out
    assert not set(task_config("smlmt_starter").source.corpus) & held_out


def test_log_frequency_sampling_prefers_frequent_words(tmp_path, tokenizer):
    # "apple" is in 60 sentences, the other words in 12 each; rows are capped at 12 per word either
    # way
    path = tmp_path / "c.csv"
    rare = WORDS[1:]
    lines = ["text,label"] + [f'"We had apple at {i}. We had {rare[i % 5]} at {i}!",x'
                              for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    counts = {}
    for sampling in ("uniform", "log_frequency"):
        t = load_task(spec(path, sampling=sampling, max_sentences_per_word=12), tokenizer,
                      str(tmp_path))
        assert max(np.bincount(t.class_ids("train"))) == 12
        apple = t.labels.index("apple")
        counts[sampling] = sum(apple in t.episode(EpisodeConfig(ways=2, shots=2, queries=2), 0,
                                                  s).classes for s in range(300))
    # uniform: 2 of 6 words, apple in 1/3 of the episodes (100 expected); log_frequency: apple's
    # weight is log(61) against log(13) for each other word, so it is in about 46% of them (138
    # expected; sd ≈ 8.6)
    assert 80 < counts["uniform"] < 120 < counts["log_frequency"]
