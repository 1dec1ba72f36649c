"""Memory as a resource: what a task actor needs, declared to Ray, and the heap handed back.

Ray places actors by the resources they declare; one that declares no memory is placed by CPU alone,
and when the node's memory runs out Ray's memory monitor kills a worker mid-step
(:mod:`raymeta.cluster.oom`). Declaring ``memory=`` makes Ray place by memory instead, and lets a
run that cannot fit its actors say so before it starts (:func:`memory_room_error`).

The estimate (:func:`actor_memory_bytes`) adds up the parts measured for a MiniLM task actor
(benchmarks/results/memory.md): the process with torch, transformers' model code and Ray loaded,
the model's weights, the gradient buffer (and, under ``reduce: collective``, the actor's own copy
of the trainable parameters and AdamW's two moments), and one episode's activations.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any, Mapping, Sequence

from ..config import ExperimentConfig

__all__ = ["BASE_BYTES", "activation_values", "actor_memory_bytes", "gb", "memory_room_error",
           "encoder_run_memory_bytes", "run_memory_bytes", "trim_heap", "worker_memory_bytes"]

GB = 2**30
# A task actor's process before its model: Python, torch, transformers' model code (which pulls
# accelerate, scipy and datasets' pandas in), Ray's core worker, the tokenizer and the task's
# tokenised rows; 0.48 GB of PSS measured on MiniLM (benchmarks/results/memory.md), rounded up.
BASE_BYTES = int(0.55 * GB)
# Activation values a step holds at its peak, per token, hidden unit and layer, and copies of the
# attention scores per head and layer (scores and softmax): Korthikanti et al. 2022 ("Reducing
# Activation Recomputation in Large Transformer Models", eq. 1) count 34 bytes per token and hidden
# unit in half precision plus 5 per head and token pair; in float32, with the gradient's own
# temporaries at the peak of the backward pass, the largest starter actor (MiniLM, 40 rows of 128
# tokens) peaked at 2.25 GB of private heap, which these constants bound with 13% to spare
# (benchmarks/results/memory.md).
ACTIVATION_VALUES = 34
SCORE_COPIES = 2


def gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.2f} GB"


def actor_memory_bytes(cfg: ExperimentConfig, params: int, trainable: int, *, hidden: int,
                       layers: int, heads: int) -> dict[str, int] | None:
    """What the actor of each task of ``cfg`` declares to Ray (``resources.memory_per_actor``),
    task -> bytes: None declares nothing, a number is that many GB for every task, ``auto``
    estimates each task's from the model (``params`` values in all, ``trainable`` of them
    meta-trained; its width, depth and attention heads) and the task's widest episode."""
    setting = cfg.resources.memory_per_actor
    if setting is None:
        return None
    if setting != "auto":
        return {t.name: int(float(setting) * GB) for t in cfg.tasks}
    four = 4  # float32
    weights, grad = four * params, four * trainable
    # reduce: collective keeps the actor's own trainable copy and AdamW's moments (the driver's
    # otherwise; under reduce: driver the actor's parameters are views of the published buffer)
    own = 3 * four * trainable if cfg.meta.reduce == "collective" else 0
    # MAML's second order keeps the inner steps' graphs too
    depth = 1 + (cfg.meta.inner_steps if cfg.meta.algorithm == "maml" else 0)
    return {t: BASE_BYTES + weights + grad + own + four * depth * values
            for t, values in activation_values(cfg, hidden=hidden, layers=layers,
                                               heads=heads).items()}


def activation_values(cfg: ExperimentConfig, *, hidden: int = 768, layers: int = 12,
                      heads: int = 12) -> dict[str, int]:
    """Task -> the activation values its widest episode holds at the peak of a step, for a model
    of this width, depth and attention heads (BERT-base's by default): what a step spends on the
    task, in memory and, near enough, in compute, so :class:`~raymeta.train.pool.ActorPool`
    balances the workers' tasks by it (``resources.workers``)."""
    e = cfg.meta.episode
    # the widest episode a task draws: support and query rows of max_length tokens (ways: None,
    # every class, counted as 16)
    rows = max((e.ways or 16) * (e.shots + e.queries), e.support_size + e.query_size)
    return {t.name: layers * layer_activation_values(rows, t.max_length, hidden=hidden,
                                                     heads=heads) for t in cfg.tasks}


def layer_activation_values(rows: int, max_length: int, *, hidden: int, heads: int) -> int:
    """The activation values one transformer layer holds for ``rows`` rows of ``max_length``
    tokens (:data:`ACTIVATION_VALUES` per token and hidden unit, :data:`SCORE_COPIES` of the
    attention scores)."""
    return (ACTIVATION_VALUES * rows * max_length * hidden
            + SCORE_COPIES * rows * heads * max_length ** 2)


def run_memory_bytes(params: int, *, hidden: int, layers: int, heads: int, rows: int,
                     max_length: int, trains: bool) -> int:
    """What one evaluation run (a Ray task of ``raymeta evaluate``, or of ``raymeta fit``'s
    cross-validation) declares to Ray, from the same parts as a task actor's estimate.

    A run that ``trains`` the encoder (a K-shot fine-tune, SetFit, FastFit) holds the process
    (:data:`BASE_BYTES`), the weights, their gradients and the optimizer's two moments (AdamW's;
    FastFit's Adafactor keeps less), and every layer's activations for a batch of ``rows`` rows of
    ``max_length`` tokens. One that only embeds (prototype, ridge, SVM heads) runs under no_grad,
    which frees each layer's activations as the next is computed: the weights and one layer's
    activations for a batch of ``rows``."""
    four = 4  # float32
    layer = four * layer_activation_values(rows, max_length, hidden=hidden, heads=heads)
    if trains:
        return BASE_BYTES + 4 * four * params + layers * layer
    return BASE_BYTES + four * params + layer


def encoder_run_memory_bytes(encoder: Any, *, rows: int, max_length: int, trains: bool) -> int:
    """:func:`run_memory_bytes` for a loaded encoder (a ``transformers`` model): its parameter
    count, width, depth and heads (BERT-base's where its config does not say)."""
    c = encoder.config
    return run_memory_bytes(sum(p.numel() for p in encoder.parameters()),
                            hidden=getattr(c, "hidden_size", 768),
                            layers=getattr(c, "num_hidden_layers", 12),
                            heads=getattr(c, "num_attention_heads", 12), rows=rows,
                            max_length=max_length, trains=trains)


# What one more task adds to a worker that already holds the model (resources.workers): its
# tokenised rows, head and head optimizer, and its episode cache; the starter's largest task's rows
# measured 0.026 GB (benchmarks/results/memory.md), rounded up with room for a larger task.
TASK_BYTES = 64 * 2**20


def worker_memory_bytes(tasks: Sequence[int]) -> int:
    """What a worker owning tasks of ``tasks`` bytes each (:func:`actor_memory_bytes`) declares: its
    tasks compute one after the other, so the largest one's process, model and activations, and
    each other task's own part (:data:`TASK_BYTES`)."""
    return max(tasks) + TASK_BYTES * (len(tasks) - 1)


def memory_room_error(sizes: Sequence[int], nodes: Sequence[Mapping[str, float]],
                      what: str = "task actors") -> str | None:
    """One line when actors of ``sizes`` bytes cannot all be placed on ``nodes`` (each node's
    ``memory`` resource, which Ray sets from the memory it found free at start less the object
    store), or None. Largest first, each onto the node with the most room left: the packing Ray's
    scheduler can at best reach. Only a fixed cluster is judged: an autoscaler adds nodes."""
    room = sorted((float(n.get("memory", 0)) for n in nodes), reverse=True)
    placed = 0
    for size in sorted(sizes, reverse=True):
        i = max(range(len(room)), key=room.__getitem__, default=None)
        if i is None or room[i] < size:
            break
        room[i] -= size
        placed += 1
    if placed == len(sizes):
        return None
    total = sum(float(n.get("memory", 0)) for n in nodes)
    return (f"resources: the run's {len(sizes)} {what} need about {gb(max(sizes))} of memory each "
            f"at most ({gb(sum(sizes))} in all), but the cluster's {len(nodes)} node(s) have room "
            f"for {placed} ({gb(total)} free for actors); use resources.workers, fewer tasks or "
            "replicas, model.trainable: lora or a smaller max_length, or set "
            "resources.memory_per_actor (GB) if the estimate is too high")


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
        return lib if lib is not None and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A step's activations and temporaries are freed into glibc's arenas, which keep them: a MiniLM
    actor's private heap stays 0.14 GB above what it holds, and grows with each new high-water
    mark. Trimming after each call keeps it at what the actor holds (benchmarks/results/memory.md)
    for about a millisecond."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)
