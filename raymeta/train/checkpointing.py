"""A run's checkpoint state: what :func:`~raymeta.core.checkpoint.save_checkpoint` writes beside
the model, gathered from the driver and the task actors, and restored into both.

The tensors (safetensors, never pickle): the outer optimiser's state, each actor's head and head
optimiser (``task.<key>.*``), and under ``model.trainable: lora | top_layers`` the trainable shared
parameters (``shared.*``), since ``model/`` then holds merged or partly frozen weights. The JSON
state: the optimiser's parameter groups, the schedule, the mixture (and the learned log-weights),
the seed and the layout's signature. Nothing else needs restoring: every random draw derives
from (seed, task, step).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint, load_encoder_weights
from ..core.optim import optimizer_from_tensors, optimizer_tensors
from ..core.trainable import layout_signature
from ..errors import ConfigError
from .state import StepState, Workers

__all__ = ["gather_state", "restore_state", "check_layout"]

log = logging.getLogger("raymeta.train")


def gather_state(s: StepState, w: Workers) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The driver's and every actor's state at step ``s.step``: (tensors, JSON state)."""
    import ray

    tensors, groups = optimizer_tensors(s.opt)
    heads = {}
    for name, st in zip(w.actors, ray.get([a.get_state.remote() for a in w.actors.values()])):
        for key, arr in st["tensors"].items():
            # a copy: arrays from the object store are read-only, which torch.from_numpy warns about
            tensors[f"task.{name}.{key}"] = torch.from_numpy(np.array(arr))
        heads[name] = st["param_groups"]
    state = {
        "optim_param_groups": groups, "scheduler": s.sched.state_dict(),
        "head_param_groups": heads, "weights": s.actor_weights, "seed": s.cfg.seed,
        # Every random draw derives from (seed, task, step): nothing else to restore.
        "rng": "stateless: episodes and dropout are seeded from (seed, task, step)",
        "layout": layout_signature(s.cfg.model, s.layout.names, s.layout.numel),
    }
    learned = s.mixture.state()
    if learned is not None:  # the learned log-weights: a resume or a replay continues from them
        state["task_weighting"] = learned
    if s.cfg.model.trainable != "full":  # model/ holds merged or partly frozen weights
        tensors.update({f"shared.{k}": v.detach().clone() for k, v in s.named.items()})
    return tensors, state


def check_layout(path: Path, state: dict[str, Any], s: StepState) -> None:
    """The checkpoint holds exactly the parameters this run trains (same mode, names, shapes)."""
    mine = layout_signature(s.cfg.model, s.layout.names, s.layout.numel)
    # checkpoints written before the layout was recorded: the full model
    theirs = state.get("layout", {"trainable": "full", "numel": None, "names_crc32": None})
    if theirs["trainable"] != mine["trainable"] or \
            theirs.get("names_crc32") not in (None, mine["names_crc32"]):
        raise ConfigError(
            f"checkpoint {path}: its trainable layout ({theirs['trainable']}, {theirs['numel']} "
            f"values) differs from this run's ({mine['trainable']}, {mine['numel']} values); "
                          "resume "
            "with the checkpoint's model.trainable / model.lora / model.top_layers")


def restore_state(path: Path, s: StepState, w: Workers, *, config_lr: bool = False) -> None:
    """Load the checkpoint at ``path`` into the driver's state and every task actor.
    ``config_lr``: keep the schedule's position but rescale it to ``optim.lr`` of the config (PBT
    changes the learning rate between a checkpoint and its restore)."""
    import ray

    tensors, state = load_checkpoint(path)
    check_layout(path, state, s)
    if s.cfg.model.trainable == "full":
        load_encoder_weights(s.encoder, path / "model")
    else:  # the frozen weights are the pretrained ones this process loaded; the trainable come back
        with torch.no_grad():
            for k, p in s.named.items():
                p.copy_(tensors[f"shared.{k}"])
    optimizer_from_tensors(s.opt, tensors, state["optim_param_groups"])
    s.sched.load_state_dict(state["scheduler"])
    if config_lr:  # keep the schedule's position, rescale it to the config's peak rate
        lr = s.cfg.optim.lr
        scale = [lr / b for b in s.sched.base_lrs]
        s.sched.base_lrs = [lr] * len(s.sched.base_lrs)
        for g, f in zip(s.opt.param_groups, scale):
            g["lr"] *= f
            g["initial_lr"] = lr
    calls = []
    for name, actor in w.actors.items():
        prefix = f"task.{name}."
        sub = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
        calls.append(actor.set_state.remote({"tensors": sub,
                                             "param_groups": state["head_param_groups"][name]}))
    ray.get(calls)
    s.mixture.load_state(state.get("task_weighting"))
    s.step = int(state["step"])
