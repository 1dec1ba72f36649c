"""``raymeta fit --export onnx``: the whole classifier (encoder, pooling, head, temperature,
softmax) as one ONNX graph, ``model.onnx`` in the classifier directory, with dynamic batch and
sequence axes: inputs ``input_ids`` and ``attention_mask`` (int64, from the directory's
tokenizer), output ``probs`` (batch, classes), columns in ``classifier.json``'s label order.

Exported with ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``: ``pip install
'raymeta[onnx]'``), then checked: where ``onnxruntime`` is installed, the graph's probabilities on
a few texts of different lengths must match :meth:`Classifier.predict_proba` within 1e-4.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import RaymetaError
from .classifier import Classifier

__all__ = ["ONNX_FILE", "export_onnx", "require_onnx"]

ONNX_FILE = "model.onnx"
MISSING = "--export onnx needs the onnx and onnxscript packages: pip install 'raymeta[onnx]'"
CHECK_TEXTS = ["a", "a short text", "a somewhat longer text, with a comma and more words in it"]


def require_onnx() -> None:
    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript")):
        raise RaymetaError(MISSING)


class _Probabilities(torch.nn.Module):
    """Token ids -> class probabilities, the classifier's rule as one module."""

    def __init__(self, clf: Classifier):
        super().__init__()
        self.encoder, self.pooling, self.temperature = clf.encoder, clf.pooling, clf.temperature
        self.register_buffer("weight", clf.weight.detach().clone())
        self.register_buffer("bias", clf.bias.detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from ..core.model import pool_hidden

        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = pool_hidden(hidden, attention_mask, self.pooling)
        return torch.softmax((emb @ self.weight.T + self.bias) / self.temperature, dim=-1)


def export_onnx(clf: Classifier, directory: str | Path) -> Path:
    """Write ``model.onnx`` into ``directory``; returns its path."""
    require_onnx()
    out = Path(directory) / ONNX_FILE
    module = _Probabilities(clf).eval()
    example = clf.tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes
        torch.onnx.export(module, (example["input_ids"], example["attention_mask"]), str(out),
                          dynamo=True, input_names=["input_ids", "attention_mask"],
                          output_names=["probs"],
                          dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                          "attention_mask": {0: batch, 1: seq}},
                          verbose=False)
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        enc = clf.tokenizer(CHECK_TEXTS, padding=True, truncation=True,
                            max_length=clf.max_length, return_tensors="np")
        got = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                 "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        want = clf.predict_proba(CHECK_TEXTS)
        if not np.allclose(got, want, atol=1e-4):
            out.unlink()
            raise RaymetaError(f"--export onnx: the exported graph disagrees with the classifier "
                               f"(max |diff| {np.abs(got - want).max():.2g}); not written")
    return out
