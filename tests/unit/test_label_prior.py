"""Label names as prior support points of the prototypes (``meta.proto.label_prior``, ``evaluate
--label-prior``): the formula, λ = 0 as today bit for bit, zero-shot from names alone, names from a
mapping or a file, and the one-line errors. No Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raymeta.arglists import shot_counts
from raymeta.config import EpisodeConfig, ModelConfig, TaskConfig, load_config
from raymeta.core.algorithms import task_gradient
from raymeta.core.base_learners import prototypes
from raymeta.core.model import MetaModel
from raymeta.errors import ConfigError, DataError, RaymetaError
from raymeta.eval.episodic import classifier_logits, embed_label_names, episodic_accuracy
from raymeta.eval.evaluate import check_label_prior
from raymeta.tasks import check_tasks, label_name, load_task

from ..conftest import TINY_BERT

TOPICS = ["sport_news", "music", "Travel_Plans"]


def _spec(d, **kw) -> TaskConfig:
    return TaskConfig.model_validate({"name": "topics", "type": "sequence_classification",
                                      "max_length": 16,
                                      "source": {"kind": "files", "format": "csv",
                                                 "files": {"train": str(d / "t.csv")}},
                                      **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    (d / "t.csv").write_text("text,label\n" + "".join(f"a line about {t} {i},{t}\n"
                                                      for i in range(6) for t in TOPICS))
    return d


def test_prototypes_follow_the_formula():
    emb = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    prior = torch.tensor([[10.0, 10.0], [0.0, -4.0]])
    lam = 0.5
    got = prototypes(emb, labels, 2, prior, lam)
    # p_c = (sum of the class's support embeddings + λ·name_c) / (n_c + λ)
    want = torch.stack([(emb[0] + emb[1] + lam * prior[0]) / (2 + lam),
                        (emb[2] + lam * prior[1]) / (1 + lam)])
    assert torch.allclose(got, want)
    # K = 0
    assert torch.equal(prototypes(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2, prior,
                                  2.0), prior)
    with pytest.raises(ValueError, match="label prior of shape"):
        prototypes(emb, labels, 2, prior[:1], 1.0)


def test_weight_zero_is_todays_prototypes_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(12, 8, generator=g), torch.arange(12) % 4
    onehot = torch.nn.functional.one_hot(labels, 4).to(emb.dtype)
    today = (onehot.T @ emb) / onehot.sum(0).unsqueeze(1)
    assert torch.equal(prototypes(emb, labels, 4, torch.randn(4, 8, generator=g), 0.0), today)
    assert torch.equal(prototypes(emb, labels, 4), today)
    # the episodic scores too: the same values, episode by episode, with names at λ = 0 and without
    # names
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(6), 10)
    x = (rng.normal(size=(6, 8))[ids] + rng.normal(size=(60, 8))).astype(np.float32)
    kw = {"ways": 3, "shots": 2, "queries": 3, "episodes": 40, "head_steps": 3}
    a = episodic_accuracy(x, ids, **kw)
    b = episodic_accuracy(x, ids, **kw, names=rng.normal(size=(6, 8)).astype(np.float32),
                          prior_weight=0.0)
    assert {k: r.values for k, r in a.items()} == {k: r.values for k, r in b.items()}


def test_zero_shot_from_names_alone_on_embeddings():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 3
    ids = np.repeat(np.arange(5), 20)
    x = (centres[ids] + rng.normal(size=(100, 16))).astype(np.float32)
    kw = {"ways": 5, "shots": 0, "queries": 5, "episodes": 30}
    named = episodic_accuracy(x, ids, **kw, names=centres.astype(np.float32),
                              prior_weight=1.0)["prototype"]
    assert named.mean > 0.9 and named.shots == 0
    wrong = episodic_accuracy(x, ids, **kw, names=np.roll(centres, 1, axis=0).astype(np.float32),
                              prior_weight=1.0)
    assert wrong["prototype"].mean < 0.2  # every name points at another class's centre
    with pytest.raises(ValueError, match="0-shot episodes need label names"):
        episodic_accuracy(x, ids, **kw)
    with pytest.raises(ValueError, match="the label-name prior is for the prototype classifier"):
        classifier_logits("ridge", torch.zeros(0, 16), torch.zeros(0, dtype=torch.long), 5,
                          torch.zeros(2, 16),
                          prior=torch.zeros(5, 16), prior_weight=1.0)


def test_label_names_normalised_mapped_and_read_from_a_file(data, tokenizer, tmp_path):
    assert label_name("card_arrival") == "card arrival" and label_name("POLITICS") == "politics"
    assert label_name("x__y") == "x y" and label_name("P40", {"P40": "child"}) == "child"
    task = load_task(_spec(data), tokenizer, str(data))
    assert task.labels == ["Travel_Plans", "music", "sport_news"]  # class ids in natural sort order
    assert task.label_texts() == ["travel plans", "music", "sport news"]
    named = load_task(_spec(data, label_names={"music": "Songs", "sport_news": "games",
                                               "Travel_Plans": "trips"}),
                      tokenizer, str(data))
    assert named.label_texts("about {name}.") == ["about trips.", "about Songs.", "about games."]
    # a JSON file is a vocabulary (FewRel's pid2name.json: [name, description]); extra entries are
    # allowed there
    f = tmp_path / "names.json"
    f.write_text(json.dumps({"music": ["songs", "d"], "sport_news": "games",
                             "Travel_Plans": "trips", "other": "x"}))
    from_file = load_task(_spec(data, label_names=str(f)), tokenizer, str(data))
    assert from_file.label_texts() == ["trips", "songs", "games"]
    batch = from_file.label_batch([2, 0])
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "games"
    from raymeta.eval.evaluate import kshot_splits

    assert kshot_splits(task, 0, 5, seed=0) == [[]]  # zero-shot: one classifier, no spread to fake
    assert len(kshot_splits(task, 2, 5, seed=0)) == 5


@pytest.mark.parametrize("names, expect", [
    ({"music": "m", "sport_news": "s"}, "task 'topics': label_names misses label 'Travel_Plans'"),
    ({"music": "m", "sport_news": "s", "Travel_Plans": "t", "cooking": "c"},
     "task 'topics': label_names names label 'cooking', which the task does not have"),
])
def test_bad_label_names_are_one_line(names, expect, data):
    with pytest.raises(DataError) as e:
        check_tasks([_spec(data, label_names=names)], str(data))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_bad_label_name_files_and_settings_are_one_line(data, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for path, expect in ((tmp_path / "none.json", "file not found"), (bad, "expected a JSON object "
                                                                      "label -> name")):
        with pytest.raises(DataError, match=expect):
            check_tasks([_spec(data, label_names=str(path))], str(data))
    with pytest.raises(ConfigError,
                       match="config key 'meta.proto.label_prior.template': must contain"):
        load_config(None, ["meta.proto.label_prior.template=x"])
    with pytest.raises(ConfigError,
                       match="meta.episode.shots is 0: meta-training episodes need a support set"):
        load_config(None, ["meta.episode.shots=0"])
    assert load_config(None, ["meta.proto.label_prior.weight=2"]).meta.proto.prior_weight == 2.0
    assert (load_config(None, []).meta.proto.prior_weight == 0.0
            and load_config(None, []).meta.proto.prior_template is None)


def test_evaluate_flags_checked_before_anything_runs():
    check_label_prior(["prototype"], [0, 1], 1.0)
    check_label_prior(["finetune"], [4], 0.0)
    for methods, shots, lam, expect in [
        (["prototype"], [0, 4], 0.0, "--shots 0 (zero-shot) needs --label-prior WEIGHT"),
        (["prototype", "finetune"], [0], 1.0,
         "--shots 0 (zero-shot): --method finetune needs examples"),
        (["finetune"], [4], 1.0, "--label-prior applies to --method prototype"),
    ]:
        with pytest.raises(RaymetaError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            check_label_prior(methods, shots, lam)
    assert shot_counts("0,1", zero_ok=True) == [0, 1]
    with pytest.raises(RaymetaError, match="needs --label-prior"):
        shot_counts("0,1")


def _tiny(task):
    torch.manual_seed(0)
    cfg = ModelConfig(from_config=TINY_BERT, head_dropout=0.0)
    # eager attention: MAML differentiates through the backward of attention (SDPA has no double
    # backward on CPU)
    return MetaModel.from_config(cfg, [(task.name, task.config.type, task.num_labels)],
                                 attn_implementation="eager").eval()


def test_zero_shot_on_a_tiny_task_and_names_in_meta_training(data, tokenizer):
    task = load_task(_spec(data), tokenizer, str(data))
    model = _tiny(task)
    names = embed_label_names(model, task)
    assert names.shape == (3, model.encoder.config.hidden_size) and np.isfinite(names).all()
    ids = task.class_ids("train")
    from raymeta.eval.episodic import embed_rows

    emb, got_ids = embed_rows(model, task, {"train": None})
    assert (got_ids == ids).all()
    res = episodic_accuracy(emb, ids, ways=3, shots=0, queries=2, episodes=5, names=names,
                            prior_weight=1.0)
    assert 0.0 <= res["prototype"].mean <= 1.0 and res["prototype"].episodes == 5
    # meta-training: λ = 0 is today's gradient bit for bit; λ > 0 changes it, through the names'
    # embeddings too
    ep = task.episode(EpisodeConfig(ways=3, shots=2, queries=2), seed=1, step=0,
                      label_template="{name}")
    assert ep.names is not None and ep.names["input_ids"].shape[0] == 3
    plain = task.episode(EpisodeConfig(ways=3, shots=2, queries=2), seed=1, step=0)
    assert plain.names is None and plain.support_rows == ep.support_rows
    for alg in ("protonet", "fomaml", "maml"):
        params = {**model.shared_named_parameters(), **model.head_named_parameters(task.name)}
        kw = {"inner_steps": 1, "inner_lr": 0.01, "temperature": 10.0}
        base = task_gradient(alg, model, task.name, task.config.type, plain, params, **kw)
        zero = task_gradient(alg, model, task.name, task.config.type, ep, params, **kw,
                             label_prior=0.0)
        assert all(torch.equal(base.grads[k], zero.grads[k]) for k in base.grads)
        with_names = task_gradient(alg, model, task.name, task.config.type, ep, params, **kw,
                                   label_prior=2.0)
        assert any(not torch.allclose(base.grads[k], with_names.grads[k]) for k in base.grads)
    with pytest.raises(ValueError, match="label_prior needs the episode's label names"):
        task_gradient("protonet", model, task.name, task.config.type, plain, params,
                      label_prior=1.0)
