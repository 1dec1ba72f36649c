"""The sentence-transformers files of an exported model directory (``final/``, ``best/``, a
checkpoint's ``model/``), written beside the Hugging Face weights, so that
``SentenceTransformer(path)`` and ``setfit.SetFitModel.from_pretrained(path)`` embed with raymeta's
own pooling instead of guessing one.

The format sentence-transformers 3 to 5 write and the hub's models have, which 6.x reads too (6.2
tested; setfit >= 1 needs sentence-transformers >= 3):

- ``modules.json``: the Transformer at ``""`` (the directory itself) and the Pooling at
  ``1_Pooling``. No Normalize: raymeta's embeddings are not normalised (a cosine prototype metric
  normalises inside its scores, not the embeddings);
- ``1_Pooling/config.json``: the hidden size and the ``pooling_mode_*`` of ``model.pooling``
  (:func:`raymeta.core.model.pool_hidden`: the mean over the attention mask, the first token, or
  the last real token);
- ``sentence_bert_config.json``: ``max_seq_length``, the longest ``max_length`` of the run's tasks
  (without a config: the tokenizer's ``model_max_length``), within the model's position
  embeddings; ``do_lower_case: false`` (the tokenizer lowercases, if its model does); and, where
  the tokenizer makes ``token_type_ids`` that raymeta never gives the model (a decoder-only model,
  :func:`raymeta.core.model.encoder_input_names`), ``tokenizer_args.model_input_names`` without
  them;
- ``config_sentence_transformers.json``: ``model_type``, no prompts, and ``similarity_fn_name``,
  the run's prototype metric (``meta.proto.distance``: ``euclidean`` or ``cosine``); left out
  without a config (sentence-transformers' default then: cosine).

Plain JSON, each file written atomically; nothing here imports sentence-transformers (an optional
extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PretrainedConfig

from ..config import ExperimentConfig
from .jsonio import write_json_atomic
from .model import default_pooling, encoder_input_names

__all__ = ["ST_POOLING", "POOLING_DIR", "max_seq_length", "sentence_transformers_files",
           "write_sentence_transformers"]

# raymeta's pooling (model.pooling) -> sentence-transformers' name for it
ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
POOLING_DIR = "1_Pooling"
# every pooling_mode_* flag of 1_Pooling/config.json (as sentence-transformers 3 to 5 write it), and
# the one each raymeta pooling sets
_FLAGS = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
          "lasttoken")
_FLAG = {"mean": "mean_tokens", "cls": "cls_token", "last": "lasttoken"}
# a tokenizer's model_max_length above this is transformers' "no limit" placeholder (1e30)
_NO_LIMIT = 1 << 24


def max_seq_length(config: PretrainedConfig, tokenizer: Any,
                   task_max_length: int | None = None) -> int | None:
    """The longest input to embed: ``task_max_length`` (the run's tasks' longest), else the
    tokenizer's ``model_max_length``, at most the model's ``max_position_embeddings``; None when
    nothing bounds it."""
    limits = [int(n) for n in (getattr(tokenizer, "model_max_length", None),
                               getattr(config, "max_position_embeddings", None))
              if isinstance(n, int) and 0 < n < _NO_LIMIT]
    if task_max_length is not None:
        limits.append(int(task_max_length))
    return min(limits, default=None)


def sentence_transformers_files(config: PretrainedConfig, tokenizer: Any, *, pooling: str,
                                task_max_length: int | None = None,
                                similarity: str | None = None,
                                input_names: list[str] | None = None) -> dict[str, Any]:
    """The files (path relative to the model directory -> JSON value) that make a Hugging Face
    model directory a sentence-transformers one embedding with ``pooling`` (``mean``, ``cls`` or
    ``last``). ``input_names``: what the model is given (None: whatever the tokenizer makes)."""
    if pooling not in _FLAG:
        raise ValueError(f"unknown pooling '{pooling}' (mean, cls or last)")
    modules = [{"idx": i, "name": str(i), "path": where,
                "type": f"sentence_transformers.models.{kind}"}
               for i, (where, kind) in enumerate([("", "Transformer"), (POOLING_DIR, "Pooling")])]
    pool = {"word_embedding_dimension": int(config.hidden_size),
            **{f"pooling_mode_{f}": f == _FLAG[pooling] for f in _FLAGS}, "include_prompt": True}
    st_config: dict[str, Any] = {
        "__version__": {"transformers": transformers.__version__, "pytorch": torch.__version__},
        "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
    }
    if similarity is not None:
        st_config["similarity_fn_name"] = similarity
    sbert: dict[str, Any] = {"max_seq_length": max_seq_length(config, tokenizer, task_max_length),
                             "do_lower_case": False}
    made = list(getattr(tokenizer, "model_input_names", None) or [])
    if input_names is not None and any(n not in input_names for n in made):
        # the tokenizer's constructor argument; ``tokenizer_args``: its name in every version
        sbert["tokenizer_args"] = {"model_input_names": [n for n in made if n in input_names]}
    return {
        "modules.json": modules,
        f"{POOLING_DIR}/config.json": pool,
        "sentence_bert_config.json": sbert,
        "config_sentence_transformers.json": st_config,
    }


def write_sentence_transformers(path: str | Path, model: nn.Module, tokenizer: Any,
                                cfg: ExperimentConfig | None = None, *,
                                pooling: str | None = None) -> list[Path]:
    """Write the sentence-transformers files of ``model`` (the one saved in the directory ``path``,
    LoRA merged) into ``path``. The pooling: ``pooling``, else ``cfg.model.pooling``, else the
    model family's default (:func:`raymeta.core.model.default_pooling`); ``cfg`` gives the tasks'
    ``max_length`` and the prototype metric too. Returns the files written."""
    config = model.config
    pooling = pooling or (cfg.model.pooling if cfg is not None else None) \
        or default_pooling(config)
    task_len = max((t.max_length for t in cfg.tasks), default=None) if cfg is not None else None
    files = sentence_transformers_files(
        config, tokenizer, pooling=pooling, task_max_length=task_len,
        similarity=cfg.meta.proto.distance if cfg is not None else None,
        input_names=encoder_input_names(model))
    return [write_json_atomic(Path(path) / rel, data, indent=2) for rel, data in files.items()]
