"""The deployable classifier: an encoder, a linear head and the rule that joins them.

A classifier directory (what ``raymeta fit`` writes) holds:

- the encoder and its tokenizer as Hugging Face files (``config.json``, ``model.safetensors``,
  tokenizer files): ``AutoModel.from_pretrained(dir)`` loads it;
- ``head.safetensors``: ``weight`` (C, H) and ``bias`` (C,) of one linear layer over the pooled
  embedding (and, for the prototype head, the ``prototypes`` it came from, for reference);
- ``classifier.json``: how to apply them (``pooling``, ``max_length``, ``temperature``), the label
  names in class-id order, and how the classifier was chosen;
- ``README.md``: the model card.

Every head raymeta fits is linear in the pooled embedding, so one rule applies them all:
``softmax((pool(encoder(x)) @ weight.T + bias) / temperature)``. A prototype head is linear too (the
Proto-MAML identity, :func:`raymeta.core.model.proto_head`), a logistic regression's coefficients
are its weights, and ridge's are its solution. Nothing is pickled: tensors in safetensors, the rest
in JSON. The model card shows the dozen lines that load and apply it with ``transformers`` and
``safetensors`` alone (tests/integration/test_fit.py runs them in a fresh process).

No Ray here: :mod:`raymeta.classify.predict` wraps :class:`Classifier` in a Ray Data map for files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core.jsonio import write_json_atomic
from ..errors import ModelError

__all__ = ["CLASSIFIER_JSON", "FORMAT", "HEAD_FILE", "Classifier", "embed_texts", "is_classifier"]

FORMAT = "raymeta-classifier"
FORMAT_VERSION = 1
CLASSIFIER_JSON = "classifier.json"
HEAD_FILE = "head.safetensors"


def is_classifier(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory with a ``classifier.json`` of this format."""
    spec = Path(path) / CLASSIFIER_JSON
    try:
        return json.loads(spec.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@torch.inference_mode()
def embed_texts(encoder: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, pooling: str,
                max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Pooled embeddings (N, H), float32, of ``texts`` under ``encoder`` in eval mode, in the order
    given. The one embedding of fitting (the heads are fitted on it) and of prediction, so that a
    head sees at prediction time what it was fitted on.

    Batches are formed longest text first (as sentence-transformers' ``encode`` does), so that
    texts of similar length share a batch and little of it is padding; padded positions are masked,
    so a text's embedding does not depend on its batch beyond float rounding."""
    from ..core.model import pool_hidden

    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.zeros(len(texts), int(encoder.config.hidden_size))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = encoder(**batch).last_hidden_state
        out[idx] = pool_hidden(hidden, batch.get("attention_mask"), pooling).float().cpu()
    encoder.train(was_training)
    return out


@dataclass
class Classifier:
    """An encoder + tokenizer and a linear head over its pooled embedding.

    ``Classifier.load(dir).predict(texts)`` gives label names, ``predict_proba(texts)`` an (N, C)
    array of probabilities in ``labels`` order."""

    encoder: Any
    tokenizer: Any
    weight: torch.Tensor  # (C, H)
    bias: torch.Tensor  # (C,)
    labels: list[str]
    pooling: str = "mean"
    max_length: int = 128
    temperature: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)  # how it was chosen (classifier.json)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    # ----------------------------------------------------------------- applying

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        emb = embed_texts(self.encoder, self.tokenizer, texts, pooling=self.pooling,
                          max_length=self.max_length, batch_size=batch_size)
        return emb @ self.weight.T + self.bias

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, C) class probabilities (columns in :attr:`labels` order)."""
        scaled = self.logits(texts, batch_size) / self.temperature
        return torch.softmax(scaled, dim=-1).numpy()

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        """The most probable label of each text."""
        ids = self.logits(texts, batch_size).argmax(-1).tolist()
        return [self.labels[i] for i in ids]

    # ----------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the directory (encoder files, ``head.safetensors``, ``classifier.json``); the model
        card is the caller's (:mod:`raymeta.classify.card`)."""
        from safetensors.torch import save_file

        from ..core.model import quiet_model_loading

        quiet_model_loading()  # transformers' "Writing model shards" bar
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous(),
                   **{k: v.contiguous() for k, v in self.extra_tensors.items()}}
        save_file(tensors, str(out / HEAD_FILE), metadata={"format": FORMAT})
        spec = {"format": FORMAT, "format_version": FORMAT_VERSION, "pooling": self.pooling,
                "max_length": self.max_length, "temperature": self.temperature,
                "labels": list(self.labels), "apply": "softmax((pool(encoder(x)) @ weight.T + "
                "bias) / temperature)", **self.info}
        write_json_atomic(out / CLASSIFIER_JSON, spec, indent=2)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Classifier":
        """A directory :meth:`save` wrote; anything else is a one-line :class:`ModelError`."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from ..core.model import quiet_model_loading

        p = Path(path)
        if not p.is_dir() or not is_classifier(p):
            what = "does not exist" if not p.exists() else f"has no {CLASSIFIER_JSON} of a " \
                "raymeta classifier (raymeta fit writes one)"
            raise ModelError(f"classifier '{path}' {what}")
        spec = json.loads((p / CLASSIFIER_JSON).read_text(encoding="utf-8"))
        quiet_model_loading()
        try:
            tensors = load_file(str(p / HEAD_FILE))
            # trust_remote_code stays off: a classifier runs only code from transformers itself
            encoder = AutoModel.from_pretrained(p, dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(p)
        except Exception as e:  # missing or truncated files: one line naming the directory
            raise ModelError(f"classifier '{path}': cannot load it "
                             f"({str(e).strip().splitlines()[0][:160]})") from None
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        keep = {k: v for k, v in spec.items()
                if k not in ("format", "format_version", "pooling", "max_length", "temperature",
                             "labels", "apply")}
        weight, bias = tensors.pop("weight"), tensors.pop("bias")
        if weight.shape[0] != len(spec["labels"]) or bias.shape != (weight.shape[0],):
            raise ModelError(f"classifier '{path}': {HEAD_FILE} has {weight.shape[0]} classes, "
                             f"{CLASSIFIER_JSON} names {len(spec['labels'])}")
        return cls(encoder=encoder, tokenizer=tokenizer, weight=weight, bias=bias,
                   labels=list(spec["labels"]), pooling=spec["pooling"],
                   max_length=int(spec["max_length"]), temperature=float(spec["temperature"]),
                   info=keep, extra_tensors=tensors)
