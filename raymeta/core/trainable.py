"""Which encoder parameters are meta-learned: ``full``, ``lora`` or ``top_layers``
(``model.trainable``).

Decided once, here, when the encoder is built: the frozen parameters get ``requires_grad=False``,
and everything downstream (the flat layout, the actors, the reduction, the all-reduce, clipping,
the outer step, checkpoints) sees only the trainable ones without knowing why
(:meth:`raymeta.core.model.MetaModel.shared_named_parameters`). A frozen parameter is loaded once by
every process from the same pretrained weights and never travels.

- ``lora``: LoRA adapters (Hu et al., ICLR 2022) through Hugging Face ``peft``; the encoder becomes
  a ``peft.PeftModel``. ``B`` starts at zero, so step 0 *is* the pretrained model, bit for bit.
  Meta-training a few adapters instead of every weight is what Meta-Adapters (Bansal et al.,
  AutoML-Conf 2022) do; it also limits the feature distortion of full fine-tuning (Kumar et al.,
  ICLR 2022), and shrinks each meta-gradient ~70× for MiniLM.
- ``top_layers: k``: everything below the top ``k`` transformer layers is frozen (the embeddings
  too).
- ``train_norms``: also train every LayerNorm (for ``lora`` as peft ``modules_to_save``, so the
  adapter directory carries them).

Pure torch + transformers + peft: no Ray here.
"""

from __future__ import annotations

import copy
import warnings
import zlib
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ModelError

__all__ = [
    "apply_trainable", "base_model", "frozen_fingerprint", "is_peft", "layout_signature",
           "lora_target_modules",
    "merged_copy", "trainable_summary", "transformer_layers",
]

# Families whose attention and feed-forward projections are nn.Linear named like BERT's.
_BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "mpnet",
                        "data2vec-text",
                        "xmod", "roc_bert", "nezha"})
_FAMILY_TARGETS: dict[str, list[str]] = {
    # GPT-2's Conv1D projections (peft handles their transposed weights)
    "gpt2": ["c_attn", "c_proj"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


def is_peft(encoder: nn.Module) -> bool:
    """True for a ``peft.PeftModel`` (``model.trainable: lora``)."""
    return hasattr(encoder, "peft_config") and hasattr(encoder, "get_base_model")


def base_model(encoder: nn.Module) -> nn.Module:
    """The transformers model itself: unwrapped from a ``PeftModel`` (its ``forward`` takes
    ``**kwargs``)."""
    return encoder.get_base_model() if is_peft(encoder) else encoder


def _norm_modules(model: nn.Module) -> dict[str, nn.Module]:
    # LayerNorm by class, not by name: BERT calls them LayerNorm, GPT-2 ln_1/ln_2/ln_f, T5 a class
    # of its own.
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("LayerNorm", "RMSNorm"))}


def _linear_names(model: nn.Module) -> list[str]:
    """The last name component of every projection LoRA can wrap (what target_modules matches)."""
    kinds = (nn.Linear, nn.Embedding)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, kinds) or type(m).__name__ == "Conv1D"}
    return sorted(names)


def lora_target_modules(cfg: ModelConfig, model: nn.Module) -> list[str]:
    """``model.lora.target_modules``, or the family's default; every name must exist in
    ``model``."""
    model_type = str(getattr(model.config, "model_type", ""))
    targets = cfg.lora.target_modules
    if targets is None:
        if model_type in _BERT_LIKE:
            targets = ["query", "key", "value", "dense"]
        elif model_type in _FAMILY_TARGETS:
            targets = _FAMILY_TARGETS[model_type]
        else:
            from peft.utils import (
                TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults,
            )

            if model_type not in peft_defaults:
                raise ModelError("config key 'model.lora.target_modules': no default for model "
                                 f"type '{model_type}'; name them (this model's projections: "
                                 f"{', '.join(_linear_names(model))})")
            targets = list(peft_defaults[model_type])
    present = set(_linear_names(model))
    missing = [t for t in targets if t not in present]
    if missing:
        raise ModelError("config key 'model.lora.target_modules': no module named "
                         f"{', '.join(repr(m) for m in missing)} "
                         f"in this {model_type or 'model'} (its projections: "
                         f"{', '.join(sorted(present))})")
    return list(targets)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList as long as ``config.num_hidden_layers``."""
    n = getattr(model.config, "num_hidden_layers", None)
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n and n]
    if not stacks:
        raise ModelError(f"config key 'model.top_layers': cannot find the {n} transformer layers "
                         f"of this {getattr(model.config, 'model_type', 'model')}")
    return stacks[0]


def _freeze_below_top(model: nn.Module, k: int) -> None:
    layers = transformer_layers(model)
    if k > len(layers):
        raise ModelError(f"config key 'model.top_layers': {k} is more than the model's "
                         f"{len(layers)} layers")
    top = {id(p) for layer in list(layers)[len(layers) - k:] for p in layer.parameters()}
    below = {id(p) for layer in list(layers)[: len(layers) - k] for p in layer.parameters()}
    # Embeddings feed the bottom layer: frozen. What sits above the stack (GPT-2's final ln_f)
    # trains.
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding)
                  for p in m.parameters()}
    embeddings |= {id(p) for n, m in model.named_children() if "embed" in n for p in m.parameters()}
    for p in model.parameters():
        if id(p) in below or (id(p) in embeddings and id(p) not in top):
            p.requires_grad_(False)


def apply_trainable(encoder: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Freeze what ``cfg.trainable`` does not train; for ``lora``, return the ``peft.PeftModel``
    around it.

    Call on the freshly loaded float32 encoder (parameters already frozen, such as BERT's unused
    pooler, stay frozen)."""
    if cfg.trainable == "full":
        return encoder
    norms = _norm_modules(encoder)
    if cfg.trainable == "top_layers":
        assert cfg.top_layers is not None  # the schema requires it
        _freeze_below_top(encoder, cfg.top_layers)
        if cfg.train_norms:
            for m in norms.values():
                m.requires_grad_(True)
        return encoder
    # imported here: full and top_layers runs never need peft
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(cfg, encoder)
    # BERT's pooler.dense is never used (heads pool the hidden states): an adapter there would get
    # no gradient.
    exclude = [n for n, _ in encoder.named_modules() if n.startswith("pooler.")] or None
    conv1d = any(type(m).__name__ == "Conv1D" and n.rsplit(".", 1)[-1] in targets for n,
                 m in encoder.named_modules())
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets,
                      fan_in_fan_out=conv1d,  # GPT-2's Conv1D stores its weight transposed
                      # B = 0: the adapters start as the identity
                      exclude_modules=exclude, init_lora_weights=True,
                      modules_to_save=(sorted({n.rsplit(".", 1)[-1] for n in norms})
                                       if cfg.train_norms and norms else None))
    # the alias or hub name, not a local path
    name = cfg.name_or_path if cfg.from_config is None else None
    # peft asks transformers a deprecated question (is_gradient_checkpointing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(encoder, lora)
    peft_model.peft_config["default"].base_model_name_or_path = name
    return peft_model


def trainable_summary(cfg: ModelConfig) -> str:
    """One short description of what trains, for logs, checkpoints and error messages."""
    if cfg.trainable == "full":
        return "full"
    norms = " + LayerNorms" if cfg.train_norms else ""
    if cfg.trainable == "top_layers":
        return f"top_layers={cfg.top_layers}{norms}"
    targets = ",".join(cfg.lora.target_modules) if cfg.lora.target_modules else "default modules"
    return f"lora r={cfg.lora.r} alpha={cfg.lora.alpha:g} on {targets}{norms}"


def layout_signature(cfg: ModelConfig, names: list[str] | tuple[str, ...],
                     numel: int) -> dict[str, Any]:
    """What a checkpoint records of its trainable layout; a resume must match it exactly."""
    return {"trainable": trainable_summary(cfg), "numel": int(numel),
            "names_crc32": zlib.crc32("\n".join(names).encode())}


@torch.no_grad()
def frozen_fingerprint(encoder: nn.Module) -> float:
    """Σ|x| over the frozen parameters, in float64: the driver and every actor must load the same
    base weights (a different revision on one node would silently change the model every gradient is
    for)."""
    total = 0.0
    for p in encoder.parameters():
        if not p.requires_grad:
            total += float(p.detach().double().abs().sum())
    return total


def merged_copy(encoder: nn.Module) -> nn.Module:
    """A plain transformers model with the LoRA adapters folded into the weights (W +
    (alpha/r)·B·A): loadable by ``AutoModel.from_pretrained`` with no peft installed. ``encoder`` is
    left as it is."""
    if not is_peft(encoder):
        return encoder
    return copy.deepcopy(encoder).merge_and_unload()
