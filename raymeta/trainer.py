"""``MetaTrainer``: the one readable outer loop.

Each meta-step reads top to bottom:
publish params (one ``ray.put``) → actors compute their task gradients → reduce Σ wᵢ gᵢ
→ outer AdamW step → log → checkpoint.

The driver holds the shared encoder, with every parameter a view into one flat float32
buffer: publishing is one zero-copy put, and the meta-gradient unflattens into ``.grad``
views without copies. It never holds task data: the actors load it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .actor import TaskActor, bind_flat
from .checkpoint import export_model, latest_checkpoint, load_checkpoint, load_encoder_weights, save_checkpoint
from .combine import TaskGrad, normalise_weights, reduce_gradients
from .config import ExperimentConfig, save_config
from .errors import ConfigError, RaymetaError
from .model import load_encoder, load_tokenizer
from .runtime import actor_options, connect
from .tracking import Tracker

__all__ = ["MetaTrainer", "train", "outer_optimizer"]

log = logging.getLogger("raymeta.train")


def outer_optimizer(named: dict[str, torch.nn.Parameter], cfg: ExperimentConfig):
    """AdamW (no decay on biases and LayerNorm), linear warm-up then cosine/linear/constant."""
    o = cfg.optim
    no_decay = [p for n, p in named.items() if n.endswith("bias") or "LayerNorm" in n or "layernorm" in n or "ln_" in n]
    ids = {id(p) for p in no_decay}
    groups = [{"params": [p for p in named.values() if id(p) not in ids], "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)
    total = cfg.meta.steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.schedule == "constant":
            return 1.0
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return max(0.0, 1 - progress) if o.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _validate(cfg: ExperimentConfig) -> None:
    if not cfg.tasks:
        raise ConfigError("config key 'tasks': no meta-training task given")
    if cfg.meta.algorithm == "reptile" and cfg.meta.inner_steps == 0:
        raise ConfigError("config key 'meta.inner_steps': reptile needs at least 1 inner step (got 0)")


class MetaTrainer:
    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False):
        _validate(cfg)
        self.cfg, self.resume = cfg, resume
        self.out = Path(cfg.output_dir)
        self.weights = normalise_weights({t.name: t.weight for t in cfg.tasks})
        self.actors: dict[str, Any] = {}
        self.step = 0

    # -- set-up ---------------------------------------------------------------------------

    def _build_driver_model(self) -> None:
        self.tokenizer = load_tokenizer(self.cfg.model)
        torch.manual_seed(self.cfg.seed)  # a from_config encoder starts from the seed
        self.encoder = load_encoder(self.cfg.model, len(self.tokenizer))
        named = {f"encoder.{n}": p for n, p in self.encoder.named_parameters() if p.requires_grad}
        self.layout, self.flat = bind_flat(named)
        self.grad_buf = torch.zeros_like(self.flat)  # the meta-gradient; .grad of every parameter views it
        self.named = named
        self.opt, self.sched = outer_optimizer(named, self.cfg)

    def _start_actors(self) -> None:
        import ray

        opts, threads, device = actor_options(self.cfg.resources, len(self.weights))
        remote = ray.remote(TaskActor)
        cfg_json = self.cfg.model_dump_json()
        self.actor_opts = (opts, threads, device)
        for name in self.weights:  # tasks with weight 0 get no actor at all
            self.actors[name] = remote.options(name=None, **opts).remote(cfg_json, name, threads, device)
        described = ray.get([a.describe.remote() for a in self.actors.values()])
        for d in described:
            if d["names"] != list(self.layout.names) or d["shapes"] != [list(s) for s in self.layout.shapes]:
                raise RaymetaError(f"task '{d['task']}': its model's shared parameters differ from the driver's "
                                   f"({d['numel']} vs {self.layout.numel} values)")
            log.info("task '%s' (%s): actor pid %s on %s, %d threads, %d train rows",
                     d["task"], d["type"], d["pid"], d["node"], d["threads"], d["train_rows"])

    # -- checkpoint state -----------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        import ray

        tensors: dict[str, torch.Tensor] = {}
        opt = self.opt.state_dict()
        for idx, st in opt["state"].items():
            for key, val in st.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(val)
        heads = {}
        for name, st in zip(self.actors, ray.get([a.get_state.remote() for a in self.actors.values()])):
            for key, arr in st["tensors"].items():
                tensors[f"task.{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(arr))
            heads[name] = st["param_groups"]
        state = {
            "optim_param_groups": opt["param_groups"], "scheduler": self.sched.state_dict(),
            "head_param_groups": heads, "weights": self.weights, "seed": self.cfg.seed,
            # Every random draw derives from (seed, task, step): nothing else to restore.
            "rng": "stateless: episodes and dropout are seeded from (seed, task, step)",
        }
        return tensors, state

    def _restore(self, path: Path) -> None:
        import ray

        load_encoder_weights(self.encoder, path / "model")
        tensors, state = load_checkpoint(path)
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, val in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = val
        self.opt.load_state_dict({"state": opt_state, "param_groups": state["optim_param_groups"]})
        self.sched.load_state_dict(state["scheduler"])
        calls = []
        for name, actor in self.actors.items():
            prefix = f"task.{name}."
            sub = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
            calls.append(actor.set_state.remote({"tensors": sub, "param_groups": state["head_param_groups"][name]}))
        ray.get(calls)
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)

    def _checkpoint(self) -> Path:
        tensors, state = self._state()
        return save_checkpoint(self.out, self.step, encoder=self.encoder, tokenizer=self.tokenizer, cfg=self.cfg,
                               tensors=tensors, state=state, keep_last=self.cfg.checkpoint.keep_last)

    # -- the loop ---------------------------------------------------------------------------

    def meta_step(self) -> dict[str, Any]:
        """One outer step. Returns its log record."""
        import ray

        t0 = time.perf_counter()
        ref = ray.put(self.flat.numpy())  # publish once: every actor reads the same object
        t_pub = time.perf_counter()
        results = ray.get([a.compute.remote(ref, self.step) for a in self.actors.values()])
        del ref  # no per-step reference outlives the step
        t_got = time.perf_counter()
        reduced = reduce_gradients(
            [TaskGrad(r["task"], r["grad"], r["loss"], self.weights[r["task"]]) for r in results],
            self.layout.numel, step=self.step, seed=self.cfg.seed, rule=self.cfg.meta.combine,
            nan_policy=self.cfg.meta.nan_policy, out=self.grad_buf,
        )
        t_red = time.perf_counter()
        for p, g in zip(self.named.values(), self.layout.unflatten(reduced.grad).values()):
            p.grad = g
        max_norm = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(list(self.named.values()), max_norm if max_norm else float("inf"))
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        t_end = time.perf_counter()
        self.step += 1
        record = {
            "step": self.step - 1, "steps": self.cfg.meta.steps, "loss": {r["task"]: r["loss"] for r in results},
            "metrics": {r["task"]: r["metrics"] for r in results}, "weights": reduced.weights,
            "skipped": reduced.skipped, "grad_norm": float(norm), "lr": lr, "step_s": t_end - t0,
            "publish_s": t_pub - t0, "wait_s": t_got - t_pub, "reduce_s": t_red - t_got, "outer_s": t_end - t_red,
            "compute_max_s": max(r["compute_s"] for r in results),
            "compute_s": {r["task"]: r["compute_s"] for r in results},
        }
        self.last_cosine, self.last_used, self.last_meta_grad = reduced.cosine, reduced.used, reduced.grad
        return record

    def run(self) -> Path:
        """Meta-train to ``meta.steps``; returns ``<output_dir>/final`` (an HF model directory)."""
        started = connect(self.cfg.resources.address)
        try:
            self._build_driver_model()
            self._start_actors()
            if self.resume:
                ckpt = latest_checkpoint(self.out)
                if ckpt is None:
                    log.warning("--resume: no checkpoint under %s; starting from step 0", self.out)
                else:
                    self._restore(ckpt)
            save_config(self.cfg, self.out)
            tracker = Tracker(self.out, list(self.weights), start_step=self.step)
            try:
                while self.step < self.cfg.meta.steps:
                    record = self.meta_step()
                    tracker.step(record, self.last_cosine, self.last_used)
                    if self.step % self.cfg.checkpoint.every_steps == 0 or self.step == self.cfg.meta.steps:
                        self._checkpoint()
                final = export_model(self.out / "final", self.encoder, self.tokenizer)
                tracker.affinity_png()
            finally:
                tracker.close()
            return final
        finally:
            self.shutdown(stop_ray=started)

    def shutdown(self, stop_ray: bool = False) -> None:
        import ray

        for a in self.actors.values():
            try:
                ray.kill(a)
            except Exception:  # already dead
                pass
        self.actors.clear()
        if stop_ray:
            ray.shutdown()


def train(cfg: ExperimentConfig, *, resume: bool = False) -> Path:
    """Meta-train ``cfg`` and return the final Hugging Face model directory."""
    return MetaTrainer(cfg, resume=resume).run()
