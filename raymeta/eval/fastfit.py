"""K-shot evaluation with FastFit (Yehudai and Bandel, NAACL 2024 demo: "When LLMs are Unfit Use
FastFit: Fast and Effective Text Classification with Many Classes"), the other few-shot tool a user
would pick instead of meta-pretraining.

``raymeta evaluate --method fastfit``. On the same seeded K-shot splits and test rows as every other
method, the init's encoder is trained by the ``fast-fit`` package's own model and trainer: batch
contrastive learning between the K-shot texts and their **label names as documents** (token-level
similarity, plus a classification loss), then each test text is scored against every label's name
and takes the best. FastFit always uses the names: a task with ``label_names`` gives those, any
other its raw label strings (FastFit turns ``_`` into spaces itself). Its settings are its README's
(40 epochs, batch 32, 4 repeats, Adafactor, classification-loss factor 0.1; ``eval.fastfit``).

fast-fit 1.2.1 (the latest release) was written against transformers 4 and datasets 2; three things
it touches have gone since, and :func:`_fastfit_trainer_class` bridges exactly those, leaving its
model, losses, data handling and training untouched:

- ``from datasets import load_metric`` (removed in datasets 3): the name is lent to ``datasets``
  only while ``fastfit`` is imported, then taken back; raymeta never calls it (it scores with its
  own metrics, :mod:`raymeta.eval.metrics`);
- ``Trainer(tokenizer=...)`` (transformers 5: ``processing_class``): ``set_trainer`` is overridden
  with the same call under the new name, and without FastFit's ``compute_metrics`` (raymeta does
  not evaluate through the trainer);
- ``TrainingArguments.overwrite_output_dir`` (gone in transformers 5), set by FastFit when no
  ``output_dir`` is given: raymeta gives a fresh one, under a temporary directory.

FastFit insists on a test split when given its data as datasets; the K-shot rows stand in for it
(it only tokenises them), and the real test rows are scored here, in batches, with the trained
model's own ``inference_forward``.

Pure torch + fast-fit (no ray): :mod:`raymeta.eval.evaluate` sends one run per (task, K, split)
out as a Ray task. ``fast-fit`` is an optional extra, imported only here, inside the functions:
``pip install 'raymeta[fastfit]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..config import TaskConfig
from ..errors import DataError, RaymetaError
from ..tasks import Task
from .metrics import classification_metrics
from .setfit import check_sentence_task, plain_model_dir, sentence_split

__all__ = ["FastfitSettings", "check_fastfit_task", "fastfit_and_evaluate", "require_fastfit",
           "train_fastfit"]

MISSING = "--method fastfit needs the fast-fit package: pip install 'raymeta[fastfit]'"


@dataclass(frozen=True)
class FastfitSettings:
    """The fields of ``eval.fastfit`` (:class:`raymeta.config.FastfitConfig`); the defaults are the
    training call in FastFit's README (its learning rate is the Hugging Face trainer's default)."""

    epochs: int = 40
    batch_size: int = 32
    num_repeats: int = 4  # each training text appears this many times per epoch, augmented
    lr: float = 5e-5
    clf_loss_factor: float = 0.1
    optim: str = "adafactor"
    max_text_length: int = 128


def require_fastfit() -> None:
    """A one-line :class:`RaymetaError` telling how to install fast-fit, when it is not
    installed."""
    if importlib.util.find_spec("fastfit") is None:
        raise RaymetaError(MISSING)


def check_fastfit_task(spec: TaskConfig, task: Task | None = None) -> None:
    """FastFit classifies single sentences by their label names: any other task type, sentence
    pairs, or two classes with one name are a one-line :class:`DataError` naming the task."""
    check_sentence_task(spec, "fastfit", task)
    if task is not None:
        names = task.label_texts("{name}")
        if twice := next((n for i, n in enumerate(names) if n in names[:i]), None):
            raise DataError(spec.name, f"--method fastfit tells classes apart by name; two "
                                       f"classes are named {twice!r}")


def _fastfit_trainer_class() -> type:
    """``fastfit.FastFitTrainer`` with the two transformers-5 fixes (module docstring)."""
    import datasets

    lent = not hasattr(datasets, "load_metric")
    if lent:  # only so that ``from datasets import load_metric`` in fastfit.train succeeds
        datasets.load_metric = _no_load_metric  # type: ignore[attr-defined]
    try:
        fastfit_train = importlib.import_module("fastfit.train")
    except ImportError:
        raise RaymetaError(MISSING) from None
    finally:
        if lent:
            del datasets.load_metric  # type: ignore[attr-defined]
    from transformers import Trainer

    class RaymetaFastFitTrainer(fastfit_train.FastFitTrainer):  # type: ignore[misc,name-defined]
        def set_trainer(self) -> None:
            # FastFit's own set_trainer, with transformers 5's processing_class for tokenizer and
            # no metric (raymeta scores the test rows itself)
            self.tokenizer.model_input_names = ["query_input_ids", "query_attention_mask",
                                                "doc_input_ids", "doc_attention_mask"]
            self.trainer = Trainer(model=self.model, args=self.training_args,
                                   train_dataset=self.train_dataset,
                                   processing_class=self.tokenizer)

    return RaymetaFastFitTrainer


@contextlib.contextmanager
def _transformers_verbosity(level: int) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity(level)
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _no_load_metric(*_: Any, **__: Any) -> Any:
    raise NotImplementedError("raymeta scores FastFit itself; datasets.load_metric is gone")


class FastfitClassifier:
    """A trained FastFit model and the class id of each of its label documents."""

    def __init__(self, model: Any, tokenizer: Any, class_of_label: dict[str, int],
                 max_length: int) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        id2label = model.config.id2label  # FastFit's label order: its sorted label strings
        self.class_ids = [class_of_label[id2label[i]] for i in range(len(id2label))]

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[int]:
        """Each text's class id: the label document it is most similar to
        (``FastFitTrainable.inference_forward``)."""
        self.model.eval()
        out: list[int] = []
        for i in range(0, len(texts), batch_size):
            # FastFit renames the tokenizer's model inputs (query_/doc_): ask for the mask by name
            enc = self.tokenizer(list(texts[i:i + batch_size]), truncation=True, padding=True,
                                 max_length=self.max_length, return_attention_mask=True,
                                 return_tensors="pt")
            scores = self.model.inference_forward(enc["input_ids"], enc["attention_mask"])
            out += [self.class_ids[j] for j in scores.argmax(-1).tolist()]
        return out


def train_fastfit(path: str, texts: Sequence[str], class_ids: Sequence[int],
                  label_names: Sequence[str], *, settings: FastfitSettings, seed: int,
                  tmp: str) -> FastfitClassifier:
    """FastFit on the model directory ``path``, trained on ``texts`` with the names
    ``label_names[class_id]`` as their label documents."""
    import datasets
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    trainer_class = _fastfit_trainer_class()
    datasets.disable_progress_bars()
    names = [str(label_names[int(c)]) for c in class_ids]
    class_of_label = dict(zip(names, map(int, class_ids)))
    train = datasets.Dataset.from_dict({"text": [str(t) for t in texts], "label": names})
    # FastFit logs the encoder's whole config as a warning, and transformers a pad-token notice,
    # once per run: noise in a Ray job's log, where one evaluation makes dozens of runs
    logging.getLogger("fastfit").setLevel(logging.ERROR)
    with warnings.catch_warnings(), _transformers_verbosity(hf_logging.ERROR):
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # the DataLoader default
        trainer = trainer_class(
            model_name_or_path=path, text_column_name="text", label_column_name="label",
            num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
            num_repeats=settings.num_repeats, learning_rate=float(settings.lr),
            clf_loss_factor=float(settings.clf_loss_factor), optim=settings.optim,
            max_text_length=settings.max_text_length, dataloader_drop_last=False, fp16=False,
            seed=seed, output_dir=os.path.join(tmp, "fastfit"), save_strategy="no",
            report_to="none", disable_tqdm=True, log_level="error",
            train_dataset=train, test_dataset=train)  # FastFit needs a test split: see above
        # the trainer prints its metrics (PrinterCallback, log_metrics): noise in a Ray job's log
        trainer.trainer.remove_callback(PrinterCallback)
        with contextlib.redirect_stdout(io.StringIO()):
            model = trainer.train()
    return FastfitClassifier(model, trainer.tokenizer, class_of_label, settings.max_text_length)


def fastfit_and_evaluate(
    init: str, task_json: str, train_rows: list[int], *, settings: FastfitSettings, seed: int,
    data_dir: str, cache_dir: str | None, max_test: int | None, pooling: str | None = None,
    threads: int | None = None, eval_batch: int = 64, task: Task | None = None,
) -> dict[str, float]:
    """FastFit ``init`` on ``train_rows`` (train-split row indices) and score the task's test
    rows."""
    require_fastfit()
    s = sentence_split(init, task_json, train_rows, "fastfit", check=check_fastfit_task,
                       data_dir=data_dir, cache_dir=cache_dir, max_test=max_test, pooling=pooling,
                       threads=threads, task=task)
    with tempfile.TemporaryDirectory(prefix="raymeta-fastfit-") as tmp:
        clf = train_fastfit(plain_model_dir(init, s.mcfg, tmp), s.train_texts, s.train_ids,
                            s.task.label_texts("{name}"), settings=settings, seed=seed, tmp=tmp)
        pred = clf.predict(s.test_texts, batch_size=eval_batch)
    return classification_metrics(pred, s.test_ids)
