"""K-shot evaluation without training: a classifier fitted to the frozen encoder's embeddings.

``raymeta evaluate --method prototype | ridge | svm``. On the same seeded K-shot splits
(:func:`raymeta.eval.evaluate.kshot_splits`) and the same test rows
(:func:`raymeta.eval.finetune.test_rows`) as fine-tuning, each split's K training examples per class
fit one classifier on pooled embeddings, and every test row goes to its highest-scoring class:
- ``prototype``: the nearest class mean (squared Euclidean distance, Snell et al. 2017 eq. 2);
- ``ridge``: ridge regression onto one-hot labels (Bertinetto et al. 2019; ``eval.ridge``);
- ``svm``: the Crammer-Singer multi-class SVM (MetaOptNet's head, Lee et al. 2019; ``eval.svm``).
Nothing is trained, so what is scored is the init's embedding space alone.

With a label-name prior (``--label-prior λ``, prototype only), each class's name, embedded by the
same encoder, is one more support point of weight λ (:func:`raymeta.core.base_learners.prototypes`);
with K = 0 the names alone classify.

Pure torch + transformers (no ray): :mod:`raymeta.eval.evaluate` sends one of these per task and
method out as a Ray task. The test rows are embedded once for all of a task's K values and splits
(they are the same for each).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import RidgeConfig, SvmConfig, TaskConfig
from ..core.model import MetaModel, load_encoder
from ..errors import DataError
from ..storage import local_model_path
from ..tasks import Task
from .episodic import classifier_logits, embed_label_names, embed_rows
from .finetune import run_setup, test_rows
from .metrics import classification_metrics

__all__ = ["check_frozen_task", "frozen_evaluate"]


def check_frozen_task(spec: TaskConfig, method: str = "prototype") -> None:
    """An embedding classifier needs classes: any other task type is a one-line :class:`DataError`
    naming the task."""
    if spec.type != "sequence_classification":
        raise DataError(spec.name,
                        f"--method {method} needs a sequence_classification task; the task is "
                        f"{spec.type}")


@torch.no_grad()
def frozen_evaluate(
    init: str, task_json: str, splits: Sequence[Sequence[int]], *, max_test: int | None,
                    data_dir: str,
    cache_dir: str | None, pooling: str | None = None, threads: int | None = None,
                    eval_batch: int = 64,
    task: Task | None = None, method: str = "prototype", ridge: RidgeConfig | None = None,
                    svm: SvmConfig | None = None,
    label_prior: float = 0.0, label_template: str = "{name}",
) -> list[dict[str, float]]:
    """Score ``init`` with ``method``'s classifier fitted to each K-shot training set in ``splits``
    (train-split row indices, K per class; K = 0: empty, with a label prior); one metrics dict
    (accuracy, macro-F1) per split, in order. ``label_prior`` λ > 0 (prototype only): the class
    names as prior support points (``label_template``)."""
    spec = TaskConfig.model_validate_json(task_json)
    check_frozen_task(spec, method)
    if label_prior > 0 and method != "prototype":
        raise DataError(spec.name, f"the label prior is for --method prototype, not {method}")
    mcfg, task = run_setup(init, task_json, pooling=pooling, threads=threads, data_dir=data_dir,
                           cache_dir=cache_dir,
                           task=task)
    model = MetaModel(load_encoder(mcfg, fetch=local_model_path), mcfg.pooling).eval()
    test_x, test_y = embed_rows(model, task, {"test": test_rows(task, max_test, seed=0)},
                                batch_size=eval_batch)
    support = sorted({int(r) for rows in splits for r in rows})  # every split's rows, embedded once
    sup_x, sup_y = embed_rows(model, task, {"train": support},
                              batch_size=eval_batch) if support else \
        (np.zeros((0, test_x.shape[1]), dtype=test_x.dtype), np.zeros(0, dtype=np.int64))
    prior = torch.from_numpy(embed_label_names(model, task,
                                               label_template)) if label_prior > 0 else None
    if prior is None and not support:
        raise DataError(task.name,
                        "K = 0 (no examples) needs a label prior (--label-prior): the names are "
                        "the prototypes")
    where = {r: i for i, r in enumerate(support)}
    qx, gold = torch.from_numpy(test_x), test_y.tolist()
    out = []
    for rows in splits:
        idx = [where[int(r)] for r in rows]
        logits = classifier_logits(method, torch.from_numpy(sup_x[idx]),
                                   torch.from_numpy(sup_y[idx]).long(),
                                   task.num_labels, qx, ridge=ridge, svm=svm, prior=prior,
                                   prior_weight=label_prior)
        out.append(classification_metrics(logits.argmax(-1).tolist(), gold))
    return out
