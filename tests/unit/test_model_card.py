"""The model card every exported model directory carries: Hugging Face's format, parsed back, no
secrets."""

from __future__ import annotations

from huggingface_hub import ModelCard

from raymeta.config import load_config
from raymeta.core.model_card import write_model_card

from ..conftest import TINY_BERT

SECRET = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3"  # a hub-token-shaped string


def config(**over):
    data = {
        "name": "card-run", "seed": 7,
        "tasks": [
            {"use": "bbc_news", "weight": 2.0},
            {"use": "chatterbot_response"},
            {"use": "smlmt_starter", "weight": 0.5},
            {"name": "private", "type": "sequence_classification",
             "source": {"kind": "hub", "dataset": f"someone/{SECRET}",
                        "read_options": {"token": SECRET}}},
            {"use": "chatterbot_language", "weight": 0},  # weight 0: not meta-trained on
        ],
        "meta": {"algorithm": "fomaml", "steps": 40, "proto": {"distance": "cosine",
                                                               "temperature": 0.1}},
        **over,
    }
    return load_config(data=data)


def test_card_parses_back_with_the_metadata(tmp_path):
    cfg = config(model={"name_or_path": "bert-base-uncased"})
    path = write_model_card(tmp_path, cfg, step=25)
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    d = card.data
    assert d.base_model == "bert-base-uncased" and d.library_name == "transformers"
    assert {"raymeta", "meta-learning", "fomaml"} <= set(d.tags)
    assert d.meta_training_tasks == ["bbc_news", "chatterbot_response", "smlmt_starter", "private"]
    assert d.meta_training_step == 25 and d.eval_results is None
    body = card.text
    assert ("25 of 40 meta-steps" in body
            and "| bbc_news | sequence_classification | 2 | built-in: bbc_news |" in body)
    assert "SMLMT over bbc_news |" in body and "cosine, temperature 0.1" in body
    assert "chatterbot_language" not in body
    assert 'AutoModel.from_pretrained("path/to/this/directory")' in body


def test_base_model_is_a_hub_name_never_a_path_nor_a_config(tmp_path):
    assert (ModelCard.load(write_model_card(tmp_path, config(), step=1)).data.base_model
            == "sentence-transformers/all-MiniLM-L6-v2")
    for model in ({"from_config": TINY_BERT}, {"name_or_path": str(tmp_path)},
                  {"name_or_path": "./runs/x/final"}):
        card = ModelCard.load(write_model_card(tmp_path, config(model=model), step=1))
        assert (card.data.base_model is None
                and "base_model" not in card.content.split("---")[1]), model


def test_validation_score_becomes_model_index(tmp_path):
    extra = {"validation_score": 0.7312, "validation_step": 20,
             "validation_tasks": ["huffpost_meta_val"], "note": "best"}
    card = ModelCard.load(write_model_card(tmp_path, config(), step=40, extra=extra))
    (res,) = card.data.eval_results
    assert res.metric_type == "accuracy" and abs(res.metric_value - 0.7312) < 1e-9
    assert res.dataset_name == "huffpost_meta_val"
    assert ("at meta-step 20: **0.7312** on huffpost_meta_val" in card.text
            and "| note | best |" in card.text)


def test_no_secrets_reach_the_card(tmp_path):
    cfg = config(model={"name_or_path": f"{SECRET}/model"})
    text = write_model_card(tmp_path, cfg, step=3, extra={"api_key": SECRET,
                                                          "where": f"s3://{SECRET}"}).read_text()
    assert SECRET not in text
    assert "hub: someone/***" in text and "***/model" in text


def test_every_algorithm_has_a_reference():
    from raymeta.config import ALGORITHMS
    from raymeta.core.model_card import _REFERENCES

    assert set(_REFERENCES) == set(ALGORITHMS)  # a new algorithm gets its paper in the card
