"""The base of every config section, and the names the sections share.

:class:`StrictModel` is the one rule of the schema: an unknown key is an error
(``extra="forbid"``), and a value assigned later (an override, a resolved field) is checked as one
read from YAML (``validate_assignment``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "TaskType",
    "Algorithm",
    "EmbeddingClassifier",
    "EvalMethod",
    "TASK_TYPES",
    "ALGORITHMS",
    "EMBEDDING_CLASSIFIERS",
    "EVAL_METHODS",
    "DEFAULT_DATA_DIR",
    "StrictModel",
    "AliasedModel",
]

TaskType = Literal[
    "sequence_classification", "token_classification", "extractive_qa", "multiple_choice"
]
Algorithm = Literal["multitask", "fomaml", "reptile", "maml", "anil", "protonet", "metaopt"]
TASK_TYPES: tuple[str, ...] = TaskType.__args__  # type: ignore[attr-defined]
ALGORITHMS: tuple[str, ...] = Algorithm.__args__  # type: ignore[attr-defined]
# A classifier fitted to frozen embeddings of a support set, without training the encoder
# (raymeta.core.base_learners): the nearest class mean (Snell et al. 2017), ridge regression
# (Bertinetto et al. 2019) or the Crammer-Singer multi-class SVM (Lee et al. 2019's MetaOptNet
# heads).
EmbeddingClassifier = Literal["prototype", "ridge", "svm"]
EMBEDDING_CLASSIFIERS: tuple[str, ...] = EmbeddingClassifier.__args__  # type: ignore[attr-defined]
# How an init is scored on a K-shot split: fine-tuning (raymeta.eval.finetune), an embedding
# classifier without training (raymeta.eval.frozen), SetFit (raymeta.eval.setfit, Tunstall et al.
# 2022) or FastFit (raymeta.eval.fastfit, Yehudai and Bandel 2024).
EvalMethod = Literal["finetune", "prototype", "ridge", "svm", "setfit", "fastfit"]
EVAL_METHODS: tuple[str, ...] = EvalMethod.__args__  # type: ignore[attr-defined]

DEFAULT_DATA_DIR = "../shared/data"


class StrictModel(BaseModel):
    # forbid: an unknown key is an error; validate_assignment: overrides set later stay checked.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AliasedModel(StrictModel):
    # ``lambda`` is a Python keyword: the field is ``lam``, read and written as ``lambda``.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, validate_by_name=True, serialize_by_alias=True
    )
