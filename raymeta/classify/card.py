"""The model card of a classifier directory (``README.md``, Hugging Face's format: YAML metadata,
then Markdown). It says what the classifier labels, on how many rows per class it was trained, how
its init and head were chosen with their cross-validation scores, where the init came from, and how
to load it with and without raymeta. No paths of the user's machine beyond the file names, and no
text of the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["classifier_card", "standalone_code"]

_POOL = {
    "mean": ("    mask = batch[\"attention_mask\"].unsqueeze(-1).to(hidden.dtype)\n"
             "    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # mean pooling\n"),
    "cls": "    emb = hidden[:, 0]  # first-token pooling\n",
    "last": ("    pos = torch.arange(hidden.shape[1])\n"
             "    last = (batch[\"attention_mask\"] * pos).argmax(1)  # last real token\n"
             "    emb = hidden[torch.arange(hidden.shape[0]), last]\n"),
}


def standalone_code(pooling: str, directory: str = "my-classifier") -> str:
    """Python that loads and applies the classifier with ``transformers`` and ``safetensors`` only
    (no raymeta): what the card shows, and what a test runs in a fresh process."""
    return (
        "import json\n\n"
        "import torch\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModel, AutoTokenizer\n\n"
        f"path = \"{directory}\"\n"
        "spec = json.load(open(f\"{path}/classifier.json\"))\n"
        "tokenizer = AutoTokenizer.from_pretrained(path)\n"
        "encoder = AutoModel.from_pretrained(path).eval()\n"
        "head = load_file(f\"{path}/head.safetensors\")\n\n\n"
        "@torch.no_grad()\n"
        "def predict_proba(texts):\n"
        "    batch = tokenizer(texts, padding=True, truncation=True, "
        "max_length=spec[\"max_length\"],\n"
        "                      return_tensors=\"pt\")\n"
        "    hidden = encoder(**batch).last_hidden_state\n"
        f"{_POOL[pooling]}"
        "    logits = emb @ head[\"weight\"].T + head[\"bias\"]\n"
        "    # columns: spec[\"labels\"]\n"
        "    return torch.softmax(logits / spec[\"temperature\"], dim=-1)\n"
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def classifier_card(spec: dict[str, Any], *, counts: dict[str, int], source: str) -> str:
    """The card's text, from the classifier's ``classifier.json`` content and the training rows per
    class."""
    chosen = spec["chosen"]
    sel = spec.get("selection", [])
    lineage = spec.get("lineage", {})
    base = lineage.get("base_model")
    meta = ["---", "library_name: transformers", "pipeline_tag: text-classification",
            "tags:", "- raymeta", "- few-shot", f"- {chosen['method']}"]
    if base and not str(base).startswith(("/", ".")):
        meta.append(f"base_model: {base}")
    meta.append("---")
    n = sum(counts.values())
    lines = [
        "\n".join(meta), "",
        f"# A text classifier: {len(counts)} classes, fitted by `raymeta fit`", "",
        f"Trained on {n} labelled rows of `{Path(source).name}` with the init "
        f"**{chosen['init']}** and the head **{chosen['method']}**.", "",
        "## Labels and training rows", "",
        "| class id | label | rows |", "|---|---|---|",
        *[f"| {i} | {label} | {c} |" for i, (label, c) in enumerate(counts.items())], "",
    ]
    lo, hi = min(counts.values()), max(counts.values())
    if hi > 2 * lo:
        lines += [f"The classes are imbalanced ({lo} to {hi} rows): SetFit's logistic regression "
                  "and fine-tuning weight the classes to balance them; prototypes count each class "
                  "once; ridge does not weight.", ""]
    lines += ["## How it was chosen", ""]
    if len(sel) > 1:
        lines += [f"`--method {spec.get('requested', 'auto')}` scored {len(sel)} candidates on the "
                  f"same {spec['folds']} stratified folds of the rows (seed {spec['seed']}); the "
                  "plain encoder with SetFit comes first and keeps the choice unless another "
                  "candidate cross-validates strictly better.", "",
                  "| init | head | CV accuracy (%) | spread (sd over folds) | wall s |",
                  "|---|---|---|---|---|",
                  *[f"| {s['init']} | {s['method']} | {_pct(s['cv_accuracy'])} | "
                    f"{_pct(s['cv_std'])} | {s['seconds']} |" for s in sel], ""]
    if sel:
        best = next(s for s in sel if s["init"] == chosen["init"]
                    and s["method"] == chosen["method"])
        lines += [f"Cross-validation estimate of the chosen candidate: accuracy "
                  f"{_pct(best['cv_accuracy'])} % (sd {_pct(best['cv_std'])} over "
                  f"{len(best['folds'])} folds). The classifier itself is refitted on all rows, "
                  "so it has seen more than any fold did.", ""]
    lines += [f"Probabilities are calibrated by one temperature ({spec['temperature']:.4g}) fitted "
              "to the out-of-fold predictions (Guo et al. 2017).", "",
              "## Lineage", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in lineage.items() if v is not None]
    lines += ["", "## Intended use and limits", "",
              "Labelling texts like the training rows, into these classes only: every text gets "
              "one of them, so texts from elsewhere get a confident wrong label. A few labelled "
              "rows give a noisy estimate: read the CV spread above before trusting the accuracy.",
              "", "## Use", "", "```python", "from raymeta import Classifier", "",
              "clf = Classifier.load(\"my-classifier\")",
              "clf.predict([\"some text\"]), clf.predict_proba([\"some text\"])", "```", "",
              "From files (a Ray Data job): `raymeta predict --model my-classifier --input "
              "texts.csv --output labelled.csv`.", "",
              "Without raymeta (`transformers` and `safetensors` only):", "", "```python",
              standalone_code(spec["pooling"]).rstrip(), "```", ""]
    if spec.get("onnx"):
        lines += ["`model.onnx` is the whole classifier as one ONNX graph: inputs `input_ids` and "
                  "`attention_mask` (int64, from this directory's tokenizer), output `probs` "
                  "(batch, classes), checked against the PyTorch classifier when it was written.",
                  ""]
    return "\n".join(lines)
