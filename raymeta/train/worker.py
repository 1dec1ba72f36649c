"""``TaskWorker``: one process owning several tasks (``resources.workers``), and a handle per task
that makes it look like the one-task actor it replaces.

With ``resources.workers`` below the number of task actors, the pool starts W workers instead of one
:class:`~raymeta.train.actor.TaskActor` per task (:class:`~raymeta.train.pool.ActorPool`): each
worker loads the encoder once and holds one ``TaskActor`` per task of its share in-process, with the
task's data, head and head optimizer its own and the tokenizer, encoder and buffers shared. Memory
and accelerators then grow with W, not with the number of tasks; a step costs the tasks of its
meta-batch (``meta.task_batch``), run one after the other on each worker.

Under ``reduce: driver`` with the mean (``meta.combine: mean``, no alignment targets), a worker
reduces its share of the step's tasks itself (:meth:`TaskWorker.compute_sum`): one gradient per
worker travels to the driver, not one per task (in float32, whatever ``meta.transfer_dtype``).

A :class:`TaskHandle` stands for one task on its worker, with the same ``.method.remote(...)`` calls
as an actor handle, so the reducers, validation, checkpoints and recovery address tasks exactly as
they address one-task actors. A call on a task returns what the one-task actor's would:
the task computes with the same model, head, episodes and dropout streams, so on the same number of
torch threads its gradient is the same, bit for bit (tests/integration/test_workers.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..cluster.memory import trim_heap
from ..core.combine import add_weighted
from .actor import TaskActor

__all__ = ["TaskWorker", "TaskHandle", "worker_of"]


class TaskWorker:
    """Several tasks in one process: ``slots`` are (task, replica) pairs, the first of which loads
    the model; the others share it (:meth:`TaskActor._share`)."""

    def __init__(self, cfg_json: str, slots: Sequence[tuple[str, int]],
                 num_threads: int | None = None, device: str = "cpu"):
        self._threads, self._device_name = num_threads, device
        self.tasks: dict[str, TaskActor] = {}
        first: TaskActor | None = None
        for name, replica in slots:
            actor = TaskActor(cfg_json, name, num_threads, device, replica, share=first)
            first = first or actor
            self.tasks[actor.key] = actor

    def call(self, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``method`` of task ``key``, as its own actor would answer it."""
        return getattr(self.tasks[key], method)(*args, **kwargs)

    def compute_sum(self, shared: np.ndarray, step: int,
                    tasks: Sequence[tuple[str, float, np.ndarray | None]]) -> dict[str, Any]:
        """Reduced here: each of ``tasks`` (key, weight, its replicas' averaged head gradient or
        None) computes its gradient as its ``compute`` would, and the finite ones are summed,
        weighted, into one float32 gradient (:func:`~raymeta.core.combine.add_weighted`). Returns
        that sum, the weight it holds, and each task's record without its gradient."""
        acc: torch.Tensor | None = None
        weight, records = 0.0, []
        for key, w, head_grad in tasks:
            actor = self.tasks[key]
            out = actor.gradient_at(shared, step, head_grad)
            if out["finite"]:  # a non-finite task stays out of the sum (meta.nan_policy)
                acc = add_weighted(acc, actor.grad_buf, w)
                weight += w
            records.append(out)
        trim_heap()
        grad = acc.cpu().numpy() if acc is not None else np.zeros(0, dtype=np.float32)
        return {"grad": grad, "weight": weight, "tasks": records}

    def reset(self, cfg_json: str, slots: Sequence[tuple[str, int]]) -> None:
        """Start over with another config (its threads and device stay), as if newly started."""
        self.__init__(cfg_json, slots, self._threads, self._device_name)


class _Method:
    def __init__(self, worker: Any, key: str, name: str):
        self.worker, self.key, self.name = worker, key, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.worker.call.remote(self.key, self.name, *args, **kwargs)


class TaskHandle:
    """Task ``key`` on the ``TaskWorker`` actor ``worker``: ``handle.compute.remote(...)`` calls the
    task's ``compute`` there. Ray's calls to one worker run in order, so the tasks of a worker never
    compute at once."""

    def __init__(self, worker: Any, key: str):
        self.worker, self.key = worker, key

    @property
    def _actor_id(self) -> Any:  # the GCS's view of this task is its worker's
        return self.worker._actor_id

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Method(self.worker, self.key, name)

    def __repr__(self) -> str:
        return f"TaskHandle({self.key!r})"


def worker_of(handle: Any) -> Any:
    """The Ray actor that runs ``handle``'s calls: its worker for a :class:`TaskHandle`, else the
    handle itself."""
    return handle.worker if isinstance(handle, TaskHandle) else handle
