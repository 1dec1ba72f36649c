"""K-shot evaluation without training: the nearest class prototype (Snell et al. 2017).

``raymeta evaluate --method prototype``. On the same seeded K-shot splits
(:func:`raymeta.eval.evaluate.kshot_splits`) and the same test rows (:func:`raymeta.eval.finetune.test_rows`) as
fine-tuning, each class's prototype is the mean pooled embedding of its K training examples, and every test
row goes to the class of the nearest prototype (squared Euclidean distance, Snell et al. 2017 eq. 2). Nothing
is trained, so what is scored is the init's embedding space alone.

Pure torch + transformers (no ray): :mod:`raymeta.eval.evaluate` sends one of these per task out as a Ray task.
The test rows are embedded once for all of a task's K values and splits (they are the same for each).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import TaskConfig
from ..core.algorithms import proto_logits, prototypes
from ..core.model import MetaModel, load_encoder
from ..errors import DataError
from ..tasks import Task
from .episodic import embed_rows
from .finetune import run_setup, test_rows
from .metrics import classification_metrics

__all__ = ["check_prototype_task", "prototype_evaluate"]


def check_prototype_task(spec: TaskConfig) -> None:
    """Prototypes need classes: any other task type is a one-line :class:`DataError` naming the task."""
    if spec.type != "sequence_classification":
        raise DataError(spec.name, f"--method prototype needs a sequence_classification task; the task is {spec.type}")


@torch.no_grad()
def prototype_evaluate(
    init: str, task_json: str, splits: Sequence[Sequence[int]], *, max_test: int | None, data_dir: str,
    cache_dir: str | None, pooling: str | None = None, threads: int | None = None, eval_batch: int = 64,
    task: Task | None = None,
) -> list[dict[str, float]]:
    """Score ``init`` with the prototype classifier of each K-shot training set in ``splits`` (train-split row
    indices, K per class); one metrics dict (accuracy, macro-F1) per split, in order."""
    check_prototype_task(TaskConfig.model_validate_json(task_json))
    mcfg, task = run_setup(init, task_json, pooling=pooling, threads=threads, data_dir=data_dir, cache_dir=cache_dir,
                           task=task)
    model = MetaModel(load_encoder(mcfg), mcfg.pooling).eval()
    test_x, test_y = embed_rows(model, task, {"test": test_rows(task, max_test, seed=0)}, batch_size=eval_batch)
    support = sorted({int(r) for rows in splits for r in rows})  # every split's rows, embedded once
    sup_x, sup_y = embed_rows(model, task, {"train": support}, batch_size=eval_batch)
    where = {r: i for i, r in enumerate(support)}
    qx, gold = torch.from_numpy(test_x), test_y.tolist()
    out = []
    for rows in splits:
        idx = [where[int(r)] for r in rows]
        protos = prototypes(torch.from_numpy(sup_x[idx]), torch.from_numpy(sup_y[idx]), task.num_labels)
        out.append(classification_metrics(proto_logits(qx, protos).argmax(-1).tolist(), gold))
    return out
