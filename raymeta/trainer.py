"""``MetaTrainer``: the one readable outer loop.

Each meta-step reads top to bottom:
publish params (one ``ray.put``) → actors compute their task gradients → reduce Σ wᵢ gᵢ
→ outer AdamW step → log → checkpoint.

The driver holds the shared encoder, with every parameter a view into one flat float32
buffer: publishing is one zero-copy put, and the meta-gradient unflattens into ``.grad``
views without copies. It never holds task data: the actors load it.

With ``meta.reduce: collective`` the actors all-reduce among themselves and each applies the
same outer step (:mod:`raymeta.collective`); the driver then only orchestrates, and pulls the
parameters and optimizer state from rank 0 when it checkpoints.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from .actor import TaskActor, bind_flat, from_wire
from .checkpoint import export_model, latest_checkpoint, load_checkpoint, load_encoder_weights, save_checkpoint
from .combine import TaskGrad, normalise_weights, reduce_gradients
from .config import ExperimentConfig, save_config
from .errors import ConfigError, RaymetaError
from .model import load_encoder, load_tokenizer
from .optim import optimizer_from_tensors, optimizer_tensors, outer_optimizer
from .runtime import actor_options, bundle_options, connect, feasible, get
from .tracking import Tracker

__all__ = ["MetaTrainer", "StepHook", "train"]

log = logging.getLogger("raymeta.train")


def _validate(cfg: ExperimentConfig) -> None:
    if not cfg.tasks:
        raise ConfigError("config key 'tasks': no meta-training task given")
    if cfg.meta.algorithm == "reptile" and cfg.meta.inner_steps == 0:
        raise ConfigError("config key 'meta.inner_steps': reptile needs at least 1 inner step (got 0)")
    if cfg.meta.reduce == "collective" and cfg.meta.combine == "pcgrad":
        raise ConfigError("config key 'meta.combine': pcgrad needs every task's gradient in one place; "
                          "use meta.reduce=driver")
    fault = cfg.meta.fault_injection
    keys = [t.name if r == 0 else f"{t.name}#{r}" for t in cfg.tasks for r in range(t.replicas)]
    if fault is not None and fault.task not in keys:
        raise ConfigError(f"config key 'meta.fault_injection.task': no task '{fault.task}' (tasks: {', '.join(keys)})")


class StepHook(Protocol):
    """Called after every meta-step with its log record and the checkpoint saved at it (or None).
    Ray Tune trials use one to score meta-validation and ``tune.report`` (:mod:`raymeta.tune`)."""

    def __call__(self, trainer: MetaTrainer, record: dict[str, Any], checkpoint: Path | None) -> None: ...


class MetaTrainer:
    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False, resume_from: Path | None = None,
                 hooks: Sequence[StepHook] = (), config_lr: bool = False):
        """``resume``: continue from the latest checkpoint in ``output_dir``; ``resume_from``: from this
        checkpoint directory. ``config_lr``: after restoring, use ``optim.lr`` from the config instead of
        the checkpoint's (PBT changes the learning rate between a checkpoint and its restore)."""
        _validate(cfg)
        self.cfg, self.resume, self.resume_from = cfg, resume, resume_from
        self.hooks, self.config_lr = list(hooks), config_lr
        self.out = Path(cfg.output_dir)
        self.weights = normalise_weights({t.name: t.weight for t in cfg.tasks})
        # one actor per task replica, keyed "<task>" or "<task>#<r>"; a replica carries w / replicas
        self.actor_weights: dict[str, float] = {}
        self.replicas_of: dict[str, list[str]] = {}
        for name, w in self.weights.items():
            k = cfg.task(name).replicas
            keys = [name] + [f"{name}#{r}" for r in range(1, k)]
            self.replicas_of[name] = keys
            self.actor_weights.update({key: w / k for key in keys})
        self.pending_head: dict[str, Any] = {}  # replicas: averaged head gradient, applied with the next call
        self.actors: dict[str, Any] = {}
        self.step = 0
        self.collective = cfg.meta.reduce == "collective"
        self.local = False
        self.last_checkpoint: Path | None = None  # written or restored by this run: where a recovery goes back to
        self.restarts = 0  # actor-crash recoveries so far (checkpoint.max_actor_restarts)

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

        if self.local:
            # On our own instance the actors take every CPU of this machine, so the driver's reduction and outer
            # step run on one torch thread (until shutdown). With two, each small op waits for the second OpenMP
            # thread, which stalls whenever the other CPU is busy: on the shared 2-CPU VM MiniLM's reduction took
            # 585 ms on 2 threads and 23 ms on 1 (benchmarks/driver_ops.py, benchmarks/RESULTS.md §5.5).
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)

        group = ray.util.get_current_placement_group()  # inside a Ray Tune trial: its bundles
        if group is not None:
            placed = bundle_options(group, len(self.actor_weights))
        else:
            opts, threads, device = actor_options(self.cfg.resources, len(self.actor_weights), local=self.local)
        remote = ray.remote(TaskActor)
        cfg_json = self.cfg.model_dump_json()
        i = 0
        for name, keys in self.replicas_of.items():  # tasks with weight 0 get no actor at all
            for r, key in enumerate(keys):
                if group is not None:  # actor i takes bundle i + 1 (bundle 0 is the trial's own)
                    task_opts, threads, device = placed[i]
                else:
                    task_opts = dict(opts)
                    if self.cfg.task(name).resources:  # per-task custom resources pin a task to a node type
                        task_opts["resources"] = {**opts.get("resources", {}), **self.cfg.task(name).resources}
                        if self.local:
                            feasible(task_opts, f"task '{name}'")
                self.actors[key] = remote.options(**task_opts).remote(cfg_json, name, threads, device, r)
                i += 1
        described = get([a.describe.remote() for a in self.actors.values()])
        for d in described:
            if d["names"] != list(self.layout.names) or d["shapes"] != [list(s) for s in self.layout.shapes]:
                raise RaymetaError(f"task '{d['task']}': its model's shared parameters differ from the driver's "
                                   f"({d['numel']} vs {self.layout.numel} values)")
            log.info("task '%s' (%s): actor pid %s on %s, %d threads, %d train rows",
                     d["task"], d["type"], d["pid"], d["node"], d["threads"], d["train_rows"])
        self.placement = {d["task"]: d["node"] for d in described}
        if self.collective:
            self._form_group()

    def _form_group(self) -> None:
        """reduce: collective: the actors form a process group and start from the driver's parameters."""
        import ray

        addr, port = ray.get(next(iter(self.actors.values())).rendezvous.remote())
        ref = ray.put(self.flat.numpy())
        tasks, weights = list(self.actor_weights), list(self.actor_weights.values())
        ray.get([a.join_group.remote(rank, tasks, weights, addr, port, ref) for rank, a in enumerate(self.actors.values())])
        log.info("reduce: collective: %d actors in a process group at %s:%d", len(tasks), addr, port)

    def _pull_from_rank0(self) -> None:
        """reduce: collective: the driver's copy of the parameters and optimizer, for a checkpoint."""
        import ray

        rank0 = next(iter(self.actors.values()))
        shared, state = ray.get([rank0.get_shared.remote(), rank0.get_outer_state.remote()])
        np.copyto(self.flat.numpy(), shared)
        optimizer_from_tensors(self.opt, {k: torch.from_numpy(np.array(v)) for k, v in state["tensors"].items()},
                               state["param_groups"])
        self.sched.load_state_dict(state["scheduler"])

    def _push_to_group(self) -> None:
        """reduce: collective, on resume: every rank continues from the restored state."""
        import ray

        tensors, groups = optimizer_tensors(self.opt)
        state = {"tensors": {k: v.numpy() for k, v in tensors.items()}, "param_groups": groups,
                 "scheduler": self.sched.state_dict()}
        ref = ray.put(self.flat.numpy())
        ray.get([a.set_outer_state.remote(ref, state) for a in self.actors.values()])

    # -- checkpoint state -----------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        import ray

        tensors, groups = optimizer_tensors(self.opt)
        heads = {}
        for name, st in zip(self.actors, ray.get([a.get_state.remote() for a in self.actors.values()])):
            for key, arr in st["tensors"].items():
                tensors[f"task.{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(arr))
            heads[name] = st["param_groups"]
        state = {
            "optim_param_groups": groups, "scheduler": self.sched.state_dict(),
            "head_param_groups": heads, "weights": self.actor_weights, "seed": self.cfg.seed,
            # Every random draw derives from (seed, task, step): nothing else to restore.
            "rng": "stateless: episodes and dropout are seeded from (seed, task, step)",
        }
        return tensors, state

    def _restore(self, path: Path) -> None:
        import ray

        load_encoder_weights(self.encoder, path / "model")
        tensors, state = load_checkpoint(path)
        optimizer_from_tensors(self.opt, tensors, state["optim_param_groups"])
        self.sched.load_state_dict(state["scheduler"])
        if self.config_lr:  # keep the schedule's position, rescale it to the config's peak rate
            scale = [self.cfg.optim.lr / b for b in self.sched.base_lrs]
            self.sched.base_lrs = [self.cfg.optim.lr] * len(self.sched.base_lrs)
            for g, f in zip(self.opt.param_groups, scale):
                g["lr"] *= f
                g["initial_lr"] = self.cfg.optim.lr
        calls = []
        for name, actor in self.actors.items():
            prefix = f"task.{name}."
            sub = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
            calls.append(actor.set_state.remote({"tensors": sub, "param_groups": state["head_param_groups"][name]}))
        ray.get(calls)
        if self.collective:
            self._push_to_group()
        self.step = int(state["step"])
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", path, self.step)

    def _average_heads(self, results: list[dict[str, Any]]) -> None:
        """Replicas of a task: the mean of their finite head gradients, for every replica's next call."""
        self.pending_head = {}
        by_key = {r["task"]: r for r in results}
        for keys in self.replicas_of.values():
            grads = [by_key[k]["head_grad"] for k in keys if by_key[k].get("head_grad") is not None]
            if len(keys) > 1 and grads:
                avg = np.mean(np.stack(grads), axis=0, dtype=np.float64).astype(np.float32)
                self.pending_head.update({k: avg for k in keys})

    def _flush_heads(self) -> None:
        """Apply pending replica head updates now, so a checkpoint holds the heads of this step."""
        if self.pending_head:
            get([self.actors[k].apply_head.remote(g) for k, g in self.pending_head.items()])
            self.pending_head = {}

    def _checkpoint(self) -> Path:
        self._flush_heads()
        if self.collective:
            self._pull_from_rank0()
        tensors, state = self._state()
        self.last_checkpoint = save_checkpoint(self.out, self.step, encoder=self.encoder, tokenizer=self.tokenizer,
                                               cfg=self.cfg, tensors=tensors, state=state,
                                               keep_last=self.cfg.checkpoint.keep_last)
        return self.last_checkpoint

    # -- the loop ---------------------------------------------------------------------------

    def meta_step(self) -> dict[str, Any]:
        """One outer step. Returns its log record."""
        import ray

        t0 = time.perf_counter()
        ref = ray.put(self.flat.numpy())  # publish once: every actor reads the same object
        t_pub = time.perf_counter()
        results = get([a.compute.remote(ref, self.step, self.pending_head.get(k)) for k, a in self.actors.items()])
        self._average_heads(results)
        del ref  # no per-step reference outlives the step
        t_got = time.perf_counter()
        reduced = reduce_gradients(
            [TaskGrad(r["task"], from_wire(r["grad"]), r["loss"], self.actor_weights[r["task"]]) for r in results],
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
            # what `raymeta bench` splits the wait into, and the bytes each actor reads and returns
            "load_s": {r["task"]: r["load_s"] for r in results}, "publish_bytes": self.layout.nbytes,
            "grad_bytes": {r["task"]: int(r["grad"].nbytes) for r in results},
        }
        self.last_cosine, self.last_used, self.last_meta_grad = reduced.cosine, reduced.used, reduced.grad
        return record

    def collective_step(self) -> dict[str, Any]:
        """reduce: collective: the actors all-reduce and step themselves; the driver collects metrics."""

        t0 = time.perf_counter()
        results = get([a.collective_step.remote(self.step, self.pending_head.get(k)) for k, a in self.actors.items()])
        self._average_heads(results)
        self.step += 1
        r0 = results[0]
        used = [r["task"] for r in results if r["finite"]]
        for task in r0["skipped"]:  # (reduce: driver warns in reduce_gradients; here the actors reduced)
            log.warning("step %d: task '%s' has a non-finite loss or gradient; skipped this step "
                        "(meta.nan_policy=skip_task)", self.step - 1, task)
        return {
            "step": self.step - 1, "steps": self.cfg.meta.steps, "loss": {r["task"]: r["loss"] for r in results},
            "metrics": {r["task"]: r["metrics"] for r in results},
            "weights": {r["task"]: r["weight"] for r in results if r["finite"]},
            "skipped": r0["skipped"], "grad_norm": r0["grad_norm"], "lr": r0["lr"], "step_s": time.perf_counter() - t0,
            "allreduce_s": max(r["allreduce_s"] for r in results), "outer_s": max(r["outer_s"] for r in results),
            "compute_max_s": max(r["compute_s"] for r in results),
            "compute_s": {r["task"]: r["compute_s"] for r in results}, "used": used,
        }

    # -- recovery from a lost task actor --------------------------------------------------------

    def _lost_actors(self, timeout_s: float = 60.0) -> list[str]:
        """Keys of the task actors whose process is gone: every actor is asked for its pid."""
        import ray

        probes = {key: a.pid.remote() for key, a in self.actors.items()}
        ray.wait(list(probes.values()), num_returns=len(probes), timeout=timeout_s)
        lost = []
        for key, ref in probes.items():
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                lost.append(key)
            except ray.exceptions.GetTimeoutError:  # alive, only slow to answer
                pass
        return lost

    def _recover(self, err: Exception, tracker: Tracker) -> None:
        """A task actor died: restart every actor, go back to this run's last checkpoint (or to the
        initial weights) and let the loop replay the lost steps. Replays are bit-exact: every random
        draw derives from (seed, task, step). A Ray error with every actor alive is re-raised as it is."""
        lost = self._lost_actors()
        if not lost:
            raise err
        names, failed, limit = ", ".join(f"'{k}'" for k in lost), self.step, self.cfg.checkpoint.max_actor_restarts
        if self.restarts >= limit:
            raise RaymetaError(f"task {names}: actor died at step {failed}, no restarts left "
                               f"(checkpoint.max_actor_restarts={limit})") from None
        self.restarts += 1
        # Every actor, not only the lost one: a process group cannot re-form around a lost rank, and the
        # survivors' heads have moved past the checkpoint.
        self.shutdown()
        self.pending_head = {}
        if self.last_checkpoint is None:
            self._build_driver_model()  # really the initial weights, with a fresh optimizer and schedule
            self.step = 0
        self._start_actors()
        if self.last_checkpoint is not None:
            self._restore(self.last_checkpoint)
        tracker.rewind(self.step)
        back = f"checkpoint step {self.step} ({self.last_checkpoint})" if self.last_checkpoint else \
            "the initial weights (step 0: no checkpoint yet)"
        log.warning("task %s: actor died at step %d; restarted every task actor from %s (restart %d of %d)",
                    names, failed, back, self.restarts, limit)

    def run(self) -> Path:
        """Meta-train to ``meta.steps``; returns ``<output_dir>/final`` (an HF model directory)."""
        import ray

        started = connect(self.cfg.resources.address)
        self.local = started  # our own fixed-size instance: infeasible requests fail at once
        try:
            self._build_driver_model()
            self._start_actors()
            if self.resume_from is not None:
                self._restore(Path(self.resume_from))
            elif self.resume:
                ckpt = latest_checkpoint(self.out)
                if ckpt is None:
                    log.warning("--resume: no checkpoint under %s; starting from step 0", self.out)
                else:
                    self._restore(ckpt)
            save_config(self.cfg, self.out)
            self.tracker = tracker = Tracker(self.out, list(self.actor_weights), start_step=self.step)
            try:
                while self.step < self.cfg.meta.steps:
                    try:
                        if self.collective:  # no task affinity: no process holds every task's gradient
                            record = self.collective_step()
                            tracker.step(record, None, record.pop("used"))
                        else:
                            record = self.meta_step()
                            tracker.step(record, self.last_cosine, self.last_used)
                        ckpt = None
                        if self.step % self.cfg.checkpoint.every_steps == 0 or self.step == self.cfg.meta.steps:
                            ckpt = self._checkpoint()
                    except ray.exceptions.RayError as e:  # a lost actor: back to the last checkpoint, replay
                        self._recover(e, tracker)
                        continue
                    for hook in self.hooks:
                        hook(self, record, ckpt)
                if self.collective:
                    self._pull_from_rank0()
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
                ray.kill(a)  # also ends a process group: its members go together
            except Exception:  # already dead
                pass
        self.actors.clear()
        if hasattr(self, "_torch_threads"):
            torch.set_num_threads(self._torch_threads)
        if stop_ray:
            ray.shutdown()


def train(cfg: ExperimentConfig, *, resume: bool = False) -> Path:
    """Meta-train ``cfg`` and return the final Hugging Face model directory."""
    return MetaTrainer(cfg, resume=resume).run()
