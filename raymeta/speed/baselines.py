"""The two alternatives ``raymeta speed`` measures the trainer against, doing the same work.

(a) :func:`run_reference`: one process computes every task's gradient in turn with all
    cores (learn2learn style): the same ``build_task_model`` / ``task_gradient`` / seeded
    episodes as the actors, one shared encoder, the same weighted sum, clipping and AdamW.
(b) :func:`run_ddp`: Ray Train's ``TorchTrainer``, DDP on gloo, one worker per task: the
    same model, the same episode as that task's actor (so the same per-worker batch), the
    multitask loss, ``backward()`` with DDP's bucketed all-reduce, the same outer AdamW on
    every rank. Its gradient is the equal-weight mean of the task gradients, which is what
    the trainer computes with equal mixture weights, so ``raymeta speed`` can check (b) too.

Both return per-step wall times and the clipped meta-gradient of step 0, for the checks.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig

# the multitask loss uses global class ids
from ..core.algorithms import algorithm_options, global_labels, task_gradient
from ..core.combine import normalise_weights
from ..core.jsonio import dumps as strict_dumps
from ..core.model import load_encoder, load_tokenizer
from ..core.optim import outer_optimizer, outer_step
from ..core.seeds import head_seed, step_seed
from ..tasks import load_task
from ..train.actor import bind_flat, build_task_model

__all__ = ["run_reference", "run_ddp"]


def _initial_encoder_state(cfg: ExperimentConfig, vocab: int) -> dict[str, torch.Tensor]:
    """The driver's θ₀: the trainer seeds before building its encoder (a from_config model is
    random)."""
    torch.manual_seed(cfg.seed)
    return {f"encoder.{n}": p.detach().clone() for n, p in load_encoder(cfg.model,
                                                                        vocab).named_parameters()}


def _head_optimizer(params: list[torch.nn.Parameter],
                    cfg: ExperimentConfig) -> torch.optim.Optimizer:
    o = cfg.optim  # as TaskActor builds it
    return torch.optim.AdamW(params, lr=o.head_lr, weight_decay=o.weight_decay, betas=o.betas)


def run_reference(cfg: ExperimentConfig, steps: int, threads: int) -> dict[str, Any]:
    """(a) The meta-step in one process, tasks one after another, ``threads`` torch threads.

    Returns ``step_s`` (per step), ``grad0`` (the clipped meta-gradient of step 0, flat float32)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tok = load_tokenizer(cfg.model)
        theta0 = _initial_encoder_state(cfg, len(tok))
        tasks = [load_task(spec, tok, cfg.data_dir, cfg.cache_dir) for spec in cfg.tasks]
        first = cfg.tasks[0]
        model = build_task_model(cfg, first.name, first.type, tasks[0].num_labels, len(tok))
        # one encoder, one head per task, seeded as the actors' are
        for spec, task in zip(cfg.tasks[1:], tasks[1:]):
            torch.manual_seed(head_seed(cfg.seed, spec.name))
            model.add_head(spec.name, spec.type, task.num_labels)
        shared = model.shared_named_parameters()
        with torch.no_grad():
            for name, p in shared.items():
                p.copy_(theta0[name])
        layout, _ = bind_flat(shared)
        meta_grad, task_grad = torch.zeros(layout.numel), torch.empty(layout.numel)
        opt, sched = outer_optimizer(shared, cfg)
        heads = {spec.name: model.head_named_parameters(spec.name) for spec in cfg.tasks}
        head_opts = {name: _head_optimizer(list(h.values()), cfg) for name, h in heads.items()}
        weights = normalise_weights({t.name: t.weight for t in cfg.tasks})
        times, grad0 = [], None
        for step in range(steps):
            t0 = time.perf_counter()
            meta_grad.zero_()
            for spec, task in zip(cfg.tasks, tasks):
                episode = task.episode(cfg.meta.episode, cfg.seed, step, stream=spec.name,
                                       label_template=cfg.meta.proto.prior_template)
                torch.manual_seed(step_seed(cfg.seed, spec.name, step))
                r = task_gradient(cfg.meta.algorithm, model, spec.name, spec.type, episode,
                                  {**shared, **heads[spec.name]},
                                  **algorithm_options(cfg.meta))
                g = layout.flatten({n: r.grads.get(n) for n in layout.names}, out=task_grad)
                meta_grad.add_(g, alpha=weights[spec.name])
                head_grads = {k: r.grads[k] for k in heads[spec.name] if k in r.grads}
                if head_grads and math.isfinite(r.loss):
                    for k, p in heads[spec.name].items():
                        p.grad = head_grads.get(k)
                    head_opts[spec.name].step()
                    head_opts[spec.name].zero_grad(set_to_none=True)
            # clips meta_grad in place
            outer_step(shared, meta_grad, opt, sched, cfg.optim.max_grad_norm)
            if step == 0:
                grad0 = meta_grad.clone()
            times.append(time.perf_counter() - t0)
        return {"step_s": times, "grad0": grad0, "threads": threads}
    finally:
        torch.set_num_threads(before)


def _ddp_worker(config: dict[str, Any]) -> None:
    """One TorchTrainer worker: task ``rank``'s episodes through a DDP-wrapped encoder."""
    import ray.train
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel


    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(config["threads"])
    cfg = ExperimentConfig.model_validate_json(config["cfg"])
    spec = cfg.tasks[rank]
    tok = load_tokenizer(cfg.model)
    task = load_task(spec, tok, cfg.data_dir, cfg.cache_dir)
    model = build_task_model(cfg, spec.name, spec.type, task.num_labels, len(tok))
    theta0 = _initial_encoder_state(cfg, len(tok))
    shared = model.shared_named_parameters()
    with torch.no_grad():
        for name, p in shared.items():
            p.copy_(theta0[name])
    # Only the encoder is shared: heads differ in shape between tasks and stay local, as on the
    # actors.
    encoder = DistributedDataParallel(model.encoder)
    head = model.head(spec.name)
    opt, sched = outer_optimizer(shared, cfg)
    head_opt = _head_optimizer(list(head.parameters()), cfg)
    times = []
    for step in range(config["steps"]):
        t0 = time.perf_counter()
        ep = task.episode(cfg.meta.episode, cfg.seed, step, stream=spec.name)
        torch.manual_seed(step_seed(cfg.seed, spec.name, step))
        s, q = global_labels(ep.support, ep.classes), global_labels(ep.query, ep.classes)
        losses = [head.loss(head(encoder(**model.encoder_inputs(b),
                                         return_dict=True).last_hidden_state, b),
                            b) for b in (s, q)]
        ns, nq = int(s["input_ids"].shape[0]), int(q["input_ids"].shape[0])
        # DDP all-reduces (averages) bucket by bucket
        ((losses[0] * ns + losses[1] * nq) / (ns + nq)).backward()
        # .grad is DDP's; on the step whose gradient is checked it is copied into one flat buffer
        # first, which the outer step then clips in place (and leaves clipped)
        grad = torch.cat([p.grad.reshape(-1)
                          for p in shared.values()]) if step == 0 and rank == 0 else None
        outer_step(shared, grad, opt, sched, cfg.optim.max_grad_norm)
        if grad is not None:
            np.save(Path(config["out"]) / "grad0.npy", grad.numpy())
        head_opt.step()
        head_opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    dist.barrier()
    if rank == 0:  # result.metrics can be None without a checkpoint: rank 0 writes a file instead
        times_file = Path(config["out"]) / "times.json"
        times_file.write_text(strict_dumps({"step_s": times, "threads": config["threads"]}))


def run_ddp(cfg: ExperimentConfig, steps: int, cpus_per_worker: float) -> dict[str, Any]:
    """(b) ``TorchTrainer`` with one gloo DDP worker per task of ``cfg``; per-step times of rank
    0."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    n = len(cfg.tasks)
    threads = max(1, int(cpus_per_worker))  # as actor_options sizes the actors' threads
    with tempfile.TemporaryDirectory(prefix="raymeta-ddp-") as d:
        out = Path(d) / "out"
        out.mkdir()
        trainer = TorchTrainer(
            _ddp_worker,
            train_loop_config={"cfg": cfg.model_dump_json(), "steps": steps, "threads": threads,
                               "out": str(out)},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=n, use_gpu=False,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(storage_path=str(Path(d) / "storage"),
                                 name=f"ddp-n{n}-{os.getpid()}"),
        )
        t0 = time.perf_counter()
        trainer.fit()
        fit_s = time.perf_counter() - t0
        result = json.loads((out / "times.json").read_text())
        result["grad0"] = torch.from_numpy(np.load(out / "grad0.npy"))
    result["fit_s"] = fit_s
    return result
