"""K-shot evaluation with SetFit (Tunstall et al. 2022), the baseline a user would pick instead of
meta-pretraining.

``raymeta evaluate --method setfit``. On the same seeded K-shot splits
(:func:`raymeta.eval.evaluate.kshot_splits`) and the same test rows
(:func:`raymeta.eval.finetune.test_rows`) as fine-tuning, the init being evaluated becomes a
sentence transformer (its encoder + raymeta's pooling for it: mean for encoders, the last token for
GPT-style models; no normalisation layer), which the ``setfit`` library's own ``Trainer`` fine-tunes
contrastively on pairs of the K-shot rows (same class: cosine 1, other class: 0), then fits a
logistic-regression head on the embeddings of those rows. Scored with raymeta's own metrics
(accuracy, macro-F1).

Every init gets its body built the same way, so that SetFit on the plain model and on a meta-trained
init differ in their weights only (the offline MiniLM's sentence-transformers folder is read as a
plain encoder too). Runs are seeded: ``seed`` is setfit's ``TrainingArguments.seed`` (the trainer's
batch shuffling and dropout); setfit builds its pairs in a fixed order, and the logistic regression
(lbfgs) is deterministic.

Pure torch + setfit (no ray): :mod:`raymeta.eval.evaluate` sends one per (task, K, split) out as a
Ray task. ``setfit`` is an optional extra, imported only here, inside the functions: ``pip install
'raymeta[setfit]'``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from ..config import ModelConfig, TaskConfig
from ..core.model import (
    ADAPTER_CONFIG,
    default_pooling,
    load_encoder,
    load_tokenizer,
    resolve_model_path,
)
from ..core.st_folder import ST_POOLING
from ..errors import DataError, RaymetaError
from ..storage import local_model_path
from ..tasks import Task
from .finetune import run_setup, test_rows
from .metrics import classification_metrics

__all__ = ["SentenceSplit", "SetfitSettings", "check_sentence_task", "check_setfit_task",
           "plain_model_dir", "require_setfit", "sentence_split", "setfit_and_evaluate",
           "setfit_rows", "task_texts", "train_setfit"]

MISSING = "--method setfit needs the setfit package: pip install 'raymeta[setfit]'"
# examples made from each class's name with a label template: setfit's zero-shot default (8)
TEMPLATED_PER_CLASS = 8

@dataclass(frozen=True)
class SetfitSettings:
    """The fields of ``eval.setfit`` (:class:`raymeta.config.SetfitConfig`); the defaults are
    SetFit's few-shot ones (Tunstall et al. 2022: 20 iterations, 1 epoch, batch 16, body learning
    rate 2e-5)."""

    iterations: int = 20  # setfit num_iterations: 2 x iterations x training rows contrastive pairs
    epochs: int = 1
    batch_size: int = 16
    body_lr: float = 2e-5


def require_setfit() -> None:
    """A one-line :class:`RaymetaError` telling how to install setfit, when it is not installed."""
    if importlib.util.find_spec("setfit") is None:
        raise RaymetaError(MISSING)


def check_sentence_task(spec: TaskConfig, method: str, task: Task | None = None) -> None:
    """``method`` (setfit, fastfit) classifies single sentences: any other task type, or a
    sentence-pair task, is a one-line :class:`DataError` naming the task."""
    if spec.type != "sequence_classification":
        raise DataError(spec.name,
                        f"--method {method} needs a sequence_classification task; the task is "
                        f"{spec.type}")
    if task is not None and any("text_pair" in ds.column_names for ds in task.raw.values()):
        raise DataError(spec.name,
                        f"--method {method} takes single sentences; the task has sentence pairs "
                        "(text_pair)")


def check_setfit_task(spec: TaskConfig, task: Task | None = None) -> None:
    """:func:`check_sentence_task` for SetFit."""
    check_sentence_task(spec, "setfit", task)


def task_texts(task: Task, split: str, rows: Sequence[int]) -> list[str]:
    raw = task.raw[split]
    assert len(raw) == len(task.features[split]), "classification features are one per raw row"
    return [str(t) for t in raw.select(list(rows))["text"]]


def _body(path: str, pooling: str | None, max_length: int) -> Any:
    """A ``SentenceTransformer``: the model directory ``path`` + raymeta's pooling for it."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    # sentence-transformers >= 5.4; ``sentence_transformers.models`` (earlier ones) is deprecated
    # there
    try:
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    config = AutoConfig.from_pretrained(path)
    word = Transformer(path, max_seq_length=max_length)
    mode = ST_POOLING[pooling or default_pooling(config)]
    body = SentenceTransformer(modules=[word, Pooling(int(config.hidden_size), mode)])
    if body.tokenizer.pad_token is None and body.tokenizer.eos_token is not None:
        # GPT-2: padded positions are masked out
        body.tokenizer.pad_token = body.tokenizer.eos_token
    return body


def plain_model_dir(init: str, mcfg: ModelConfig, tmp: str) -> str:
    """``init``'s model as a plain Hugging Face directory SetFit can read: a storage URI's local
    copy, or a LoRA adapter's merged model written under ``tmp``."""
    path = resolve_model_path(init, local_model_path)  # a storage URI: a copy on this node
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        merged = os.path.join(tmp, "merged")
        load_encoder(mcfg, fetch=local_model_path).save_pretrained(merged)
        load_tokenizer(mcfg, fetch=local_model_path).save_pretrained(merged)
        return merged
    return path


def setfit_rows(texts: Sequence[str], class_ids: Sequence[int],
                label_names: Sequence[str] | None = None, label_template: str | None = None) -> Any:
    """SetFit's training rows (a ``datasets.Dataset``: text, label): ``texts``, then, with
    ``label_template``, ``TEMPLATED_PER_CLASS`` rows per class from its name in ``label_names``
    (one per class id), made by ``setfit.get_templated_dataset``."""
    import datasets
    import setfit

    train = datasets.Dataset.from_dict({"text": list(texts),
                                        "label": [int(c) for c in class_ids]})
    if label_template is None:
        return train
    assert label_names is not None, "a label template needs the label names"
    named = setfit.get_templated_dataset(
        candidate_labels=list(label_names), sample_size=TEMPLATED_PER_CLASS,
        template=label_template.replace("{name}", "{}"))  # label = index in candidate_labels
    return datasets.concatenate_datasets([train, named.cast(train.features)])


def train_setfit(path: str, texts: Sequence[str], class_ids: Sequence[int], *,
                 settings: SetfitSettings, seed: int, pooling: str | None, max_length: int,
                 tmp: str, head: Any = None, label_names: Sequence[str] | None = None,
                 label_template: str | None = None) -> Any:
    """A ``setfit.SetFitModel`` on the model directory ``path`` (+ raymeta's pooling), its body
    trained contrastively on ``texts`` and its head (default: a logistic regression) fitted on their
    embeddings: the one SetFit run behind ``evaluate --method setfit`` and ``raymeta fit``.

    ``label_template`` (with ``label_names``, one per class id): SetFit's label-name track, the
    training rows plus ``TEMPLATED_PER_CLASS`` examples per class made from its name by
    ``setfit.get_templated_dataset`` (``"This is about {name}."`` -> "This is about sports.")."""
    try:
        import setfit
    except ImportError:
        raise RaymetaError(MISSING) from None
    import datasets
    from sklearn.linear_model import LogisticRegression
    from transformers.trainer_callback import ProgressCallback

    setfit.logging.set_verbosity_warning()  # setfit turns its own INFO logging on at import
    datasets.disable_progress_bars()
    train = setfit_rows(texts, class_ids, label_names, label_template)
    model = setfit.SetFitModel(model_body=_body(path, pooling, max_length),
                               model_head=head if head is not None else LogisticRegression())
    args = setfit.TrainingArguments(
        output_dir=os.path.join(tmp, "trainer"), batch_size=settings.batch_size,
        num_epochs=settings.epochs, num_iterations=settings.iterations,
        body_learning_rate=float(settings.body_lr), seed=seed, report_to="none",
        save_strategy="no", logging_strategy="no", logging_first_step=False,
        show_progress_bar=False,
    )
    trainer = setfit.Trainer(model=model, args=args, train_dataset=train)
    trainer.remove_callback(ProgressCallback)  # a tqdm bar per run is noise in a Ray job log
    with warnings.catch_warnings():
        # the DataLoader default, on CPU
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        trainer.train()
    return model


class SentenceSplit(NamedTuple):
    """What a K-shot run of a sentence method (SetFit, FastFit) works on: the init's model config,
    the task, its train rows' texts and class ids, and the test rows' texts and class ids."""

    mcfg: ModelConfig
    spec: TaskConfig
    task: Task
    train_texts: list[str]
    train_ids: list[int]
    test_texts: list[str]
    test_ids: list[int]


def sentence_split(init: str, task_json: str, train_rows: list[int], method: str, *,
                   check: Callable[[TaskConfig, Task | None], None], data_dir: str,
                   cache_dir: str | None, max_test: int | None, pooling: str | None,
                   threads: int | None, task: Task | None) -> SentenceSplit:
    """The task of ``task_json`` checked by ``check`` (before and after loading), loaded with the
    init's tokenizer in this Ray worker (:func:`~raymeta.eval.finetune.run_setup`), and the texts
    of ``train_rows`` and of the seeded test rows, with their class ids."""
    spec = TaskConfig.model_validate_json(task_json)
    check(spec, None)
    mcfg, task = run_setup(init, task_json, pooling=pooling, threads=threads, data_dir=data_dir,
                           cache_dir=cache_dir, task=task)
    check(spec, task)
    train_ids, test_ids = task.class_ids("train"), task.class_ids("test")
    assert train_ids is not None and test_ids is not None, f"{method}: classification only"
    rows = test_rows(task, max_test, seed=0)
    return SentenceSplit(mcfg, spec, task, task_texts(task, "train", train_rows),
                         [int(train_ids[r]) for r in train_rows], task_texts(task, "test", rows),
                         [int(test_ids[r]) for r in rows])


def setfit_and_evaluate(
    init: str, task_json: str, train_rows: list[int], *, settings: SetfitSettings, seed: int,
    data_dir: str, cache_dir: str | None, max_test: int | None, pooling: str | None = None,
    threads: int | None = None, eval_batch: int = 64, task: Task | None = None,
    label_template: str | None = None,
) -> dict[str, float]:
    """SetFit ``init`` on ``train_rows`` (train-split row indices) and score the task's test
    rows; ``label_template``: with templated label-name examples (:func:`train_setfit`)."""
    require_setfit()
    s = sentence_split(init, task_json, train_rows, "setfit", check=check_setfit_task,
                       data_dir=data_dir, cache_dir=cache_dir, max_test=max_test, pooling=pooling,
                       threads=threads, task=task)
    with tempfile.TemporaryDirectory(prefix="raymeta-setfit-") as tmp:
        model = train_setfit(plain_model_dir(init, s.mcfg, tmp), s.train_texts, s.train_ids,
                             settings=settings, seed=seed, pooling=s.mcfg.pooling,
                             max_length=s.spec.max_length, tmp=tmp,
                             label_names=s.task.label_texts("{name}") if label_template else None,
                             label_template=label_template)
        pred = model.predict(s.test_texts, batch_size=eval_batch, as_numpy=True,
                             show_progress_bar=False)
    return classification_metrics([int(p) for p in pred], s.test_ids)
