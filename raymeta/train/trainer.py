"""``MetaTrainer``: the one readable outer loop.

Each meta-step reads top to bottom:
publish params (one ``ray.put``) → actors compute their task gradients → reduce Σ wᵢ gᵢ
→ outer AdamW step → log → checkpoint.

The driver holds the shared encoder, with every parameter a view into one flat float32
buffer: publishing is one zero-copy put, and the meta-gradient unflattens into ``.grad``
views without copies. It never holds task data: the actors load it.

With ``meta.reduce: collective`` the actors all-reduce among themselves and each applies the
same outer step (:mod:`raymeta.train.collective`); the driver then only orchestrates, and pulls the
parameters and optimizer state from rank 0 when it checkpoints.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from ..config import ExperimentConfig, save_config
from ..core.checkpoint import export_model, latest_checkpoint, load_checkpoint, load_encoder_weights, save_checkpoint
from ..core.combine import TaskGrad, normalise_weights, reduce_gradients
from ..core.model import load_encoder, load_tokenizer
from ..core.optim import optimizer_from_tensors, optimizer_tensors, outer_optimizer
from ..core.trainable import frozen_fingerprint, layout_signature, trainable_summary
from ..errors import ConfigError, RaymetaError
from ..runtime import actor_options, bundle_options, connect, feasible, get, kill
from .actor import TaskActor, bind_flat, from_wire
from .tracking import Tracker
from .validation import BEST_JSON, Validator, wants_best

__all__ = ["MetaTrainer", "StepHook", "actor_keys", "train"]

log = logging.getLogger("raymeta.train")


def _validate(cfg: ExperimentConfig) -> None:
    if not cfg.tasks:
        raise ConfigError("config key 'tasks': no meta-training task given")
    if cfg.meta.algorithm == "reptile" and cfg.meta.inner_steps == 0:
        raise ConfigError("config key 'meta.inner_steps': reptile needs at least 1 inner step (got 0)")
    if cfg.meta.reduce == "collective" and cfg.meta.combine == "pcgrad":
        raise ConfigError("config key 'meta.combine': pcgrad needs every task's gradient in one place; "
                          "use meta.reduce=driver")
    wants_best(cfg)  # checkpoint.best without validation tasks: one line, before anything starts
    fault = cfg.meta.fault_injection
    keys = [t.name if r == 0 else f"{t.name}#{r}" for t in cfg.tasks for r in range(t.replicas)]
    if fault is not None and fault.task not in keys:
        raise ConfigError(f"config key 'meta.fault_injection.task': no task '{fault.task}' (tasks: {', '.join(keys)})")


class StepHook(Protocol):
    """Called after every meta-step with its log record and the checkpoint saved at it (or None).
    Ray Tune trials use one to score meta-validation and ``tune.report`` (:mod:`raymeta.tune.search`)."""

    def __call__(self, trainer: MetaTrainer, record: dict[str, Any], checkpoint: Path | None) -> None: ...


def actor_keys(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """Task name -> the keys of its task actors, ``<task>`` then ``<task>#<r>`` for replicas r = 1, 2, ...; a task
    with mixture weight 0 gets none."""
    return {t.name: [t.name] + [f"{t.name}#{r}" for r in range(1, t.replicas)] for t in cfg.tasks if t.weight > 0}


class MetaTrainer:
    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False, resume_from: Path | None = None,
                 hooks: Sequence[StepHook] = (), config_lr: bool = False, actors: Mapping[str, Any] | None = None,
                 keep_actors: bool = False):
        """``resume``: continue from the latest checkpoint in ``output_dir``; ``resume_from``: from this
        checkpoint directory. ``config_lr``: after restoring, use ``optim.lr`` from the config instead of
        the checkpoint's (PBT changes the learning rate between a checkpoint and its restore).
        ``actors``: already started ``TaskActor`` handles keyed like the trainer's actors (``<task>`` or
        ``<task>#<r>``) to reuse instead of starting new ones; they are reset to this config, and stay
        alive at shutdown (their owner ends them). ``keep_actors``: when :meth:`run` returns normally, the actors
        stay alive and in ``self.actors`` for the caller to reuse or end (a Ray Tune trial hands them to the next
        trial of its process), also when a hook ends the run with ``SystemExit``; on an error they are ended."""
        _validate(cfg)
        self.cfg, self.resume, self.resume_from = cfg, resume, resume_from
        self.hooks, self.config_lr = list(hooks), config_lr
        self.out = Path(cfg.output_dir)
        self.weights = normalise_weights({t.name: t.weight for t in cfg.tasks})
        # one actor per task replica, keyed "<task>" or "<task>#<r>"; a replica carries w / replicas
        self.replicas_of = actor_keys(cfg)
        self.actor_weights = {key: self.weights[name] / len(keys) for name, keys in self.replicas_of.items()
                              for key in keys}
        self.pending_head: dict[str, Any] = {}  # replicas: averaged head gradient, applied with the next call
        self.actors: dict[str, Any] = {}
        self.reused = dict(actors) if actors is not None else None
        self.keep_actors = keep_actors
        self.step = 0
        self.collective = cfg.meta.reduce == "collective"
        self.local = False
        self.last_checkpoint: Path | None = None  # written or restored by this run: where a recovery goes back to
        self.restarts = 0  # actor-crash recoveries so far (checkpoint.max_actor_restarts)
        # meta-validation (eval.validation): scores steps on held-out tasks, keeps <output_dir>/best
        self.validator = Validator(cfg, self.out) if cfg.eval.validation is not None else None

    # -- set-up ---------------------------------------------------------------------------

    def setup(self, *, local: bool | None = None, resume_point: Path | None = None) -> None:
        """Everything before the first meta-step: the driver's encoder, flat buffer and optimizer, then the
        task actors (started, or the ones given to reuse, reset), checked against the driver's layout, in a
        process group under ``reduce: collective``. :meth:`run` starts with it; ``raymeta bench`` and tests
        call it, then :meth:`meta_step` / :meth:`collective_step`, to time or check exactly what training runs.
        ``local``: this process started the Ray instance (fixed size: infeasible requests fail at once).
        ``resume_point``: a checkpoint to be restored next; its layout is checked before any actor starts."""
        if local is not None:
            self.local = local
        self.prepare(resume_point=resume_point)
        self._start_actors()

    def prepare(self, *, resume_point: Path | None = None) -> None:
        """The part of :meth:`setup` that needs no Ray: the driver's encoder, flat buffer and optimizer, and the
        layout check of ``resume_point``. :meth:`run` calls it before connecting, so that a model that cannot be
        built as configured (LoRA targets, top layers) or a checkpoint of another layout fails in a second, not
        after a local Ray instance has started."""
        self._build_driver_model()
        if resume_point is not None:
            self._check_layout(resume_point, load_checkpoint(resume_point)[1])

    def use_collective(self) -> None:
        """After :meth:`setup` under ``reduce: driver``: the same actors form a process group and the next
        steps go through :meth:`collective_step` (``raymeta bench`` times both modes on one set of actors)."""
        if not self.collective:
            self.collective = True
            self._form_group()

    def _build_driver_model(self) -> None:
        self.tokenizer = load_tokenizer(self.cfg.model)
        torch.manual_seed(self.cfg.seed)  # a from_config encoder starts from the seed
        self.encoder = load_encoder(self.cfg.model, len(self.tokenizer))
        named = {f"encoder.{n}": p for n, p in self.encoder.named_parameters() if p.requires_grad}
        total = sum(p.numel() for p in self.encoder.parameters())
        log.info("trainable (model.trainable): %s, %s of %s encoder parameters (%.2f%%)",
                 trainable_summary(self.cfg.model), f"{sum(p.numel() for p in named.values()):,}", f"{total:,}",
                 100.0 * sum(p.numel() for p in named.values()) / total)
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

        if self.reused is not None:
            self._reuse_actors()
            return self._check_actors()
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
        self._check_actors()

    def _reuse_actors(self) -> None:
        assert self.reused is not None
        missing = [k for keys in self.replicas_of.values() for k in keys if k not in self.reused]
        if missing:
            raise RaymetaError(f"task '{missing[0]}': no actor among the ones given to reuse ({', '.join(self.reused)})")
        cfg_json = self.cfg.model_dump_json()
        self.actors = {k: self.reused[k] for keys in self.replicas_of.values() for k in keys}
        get([self.actors[k].reset.remote(cfg_json, name, r)
             for name, keys in self.replicas_of.items() for r, k in enumerate(keys)])

    def _check_actors(self) -> None:
        """Every actor computes for the driver's layout and loaded the same frozen weights."""
        described = get([a.describe.remote() for a in self.actors.values()])
        frozen = frozen_fingerprint(self.encoder)
        for d in described:
            if d["names"] != list(self.layout.names) or d["shapes"] != [list(s) for s in self.layout.shapes]:
                raise RaymetaError(f"task '{d['task']}': its model's shared parameters differ from the driver's "
                                   f"({d['numel']} vs {self.layout.numel} values)")
            # Frozen parameters never travel: each process loaded them, and they must be the same weights.
            if abs(d["frozen"] - frozen) > 1e-6 * max(1.0, abs(frozen)):
                raise RaymetaError(f"task '{d['task']}': its frozen encoder weights differ from the driver's "
                                   f"(Σ|w| {d['frozen']:.6g} vs {frozen:.6g}): every node must load the same model")
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
                # a copy: arrays from the object store are read-only, which torch.from_numpy warns about
                tensors[f"task.{name}.{key}"] = torch.from_numpy(np.array(arr))
            heads[name] = st["param_groups"]
        state = {
            "optim_param_groups": groups, "scheduler": self.sched.state_dict(),
            "head_param_groups": heads, "weights": self.actor_weights, "seed": self.cfg.seed,
            # Every random draw derives from (seed, task, step): nothing else to restore.
            "rng": "stateless: episodes and dropout are seeded from (seed, task, step)",
            "layout": layout_signature(self.cfg.model, self.layout.names, self.layout.numel),
        }
        if self.cfg.model.trainable != "full":  # model/ holds merged or partly frozen weights: keep the trainable ones
            tensors.update({f"shared.{k}": v.detach().clone() for k, v in self.named.items()})
        return tensors, state

    def _restore(self, path: Path) -> None:
        import ray

        tensors, state = load_checkpoint(path)
        self._check_layout(path, state)
        if self.cfg.model.trainable == "full":
            load_encoder_weights(self.encoder, path / "model")
        else:  # the frozen weights are the pretrained ones this process loaded; the trainable ones come back
            with torch.no_grad():
                for k, p in self.named.items():
                    p.copy_(tensors[f"shared.{k}"])
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

    def _check_layout(self, path: Path, state: dict[str, Any]) -> None:
        """The checkpoint holds exactly the parameters this run trains (same mode, names, shapes)."""
        mine = layout_signature(self.cfg.model, self.layout.names, self.layout.numel)
        theirs = state.get("layout", {"trainable": "full", "numel": None, "names_crc32": None})  # older checkpoints
        if theirs["trainable"] != mine["trainable"] or theirs.get("names_crc32") not in (None, mine["names_crc32"]):
            raise ConfigError(f"checkpoint {path}: its trainable layout ({theirs['trainable']}, {theirs['numel']} values) "
                              f"differs from this run's ({mine['trainable']}, {mine['numel']} values); resume with the "
                              "checkpoint's model.trainable / model.lora / model.top_layers")

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
        draw derives from (seed, task, step). A Ray error with every actor alive is re-raised as it is.
        An actor that dies while the actors restart costs one more restart (the same limit), not a traceback."""
        import ray

        lost = self._lost_actors()
        if not lost:
            raise err
        names, failed, limit = ", ".join(f"'{k}'" for k in lost), self.step, self.cfg.checkpoint.max_actor_restarts
        latest = names  # the actors lost last: the first ones, or ones that died while the actors restarted
        while True:
            if self.restarts >= limit:
                raise RaymetaError(f"task {latest}: actor died at step {failed}, no restarts left "
                                   f"(checkpoint.max_actor_restarts={limit})") from None
            self.restarts += 1
            try:
                self._restart_actors()
                break
            except ray.exceptions.RayError as again:
                lost = self._lost_actors()
                if not lost:
                    raise again
                latest = ", ".join(f"'{k}'" for k in lost)
                log.warning("task %s: actor died while the task actors restarted (restart %d of %d)",
                            latest, self.restarts, limit)
        tracker.rewind(self.step)
        back = f"checkpoint step {self.step} ({self.last_checkpoint})" if self.last_checkpoint else \
            "the initial weights (step 0: no checkpoint yet)"
        log.warning("task %s: actor died at step %d; restarted every task actor from %s (restart %d of %d)",
                    names, failed, back, self.restarts, limit)

    def _restart_actors(self) -> None:
        """Every actor anew, back at the last checkpoint (or the initial weights, step 0)."""
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

    def run(self) -> Path:
        """Meta-train to ``meta.steps``; returns ``<output_dir>/final`` (an HF model directory)."""
        import ray

        ckpt = Path(self.resume_from) if self.resume_from is not None else \
            latest_checkpoint(self.out) if self.resume else None
        if self.resume and self.resume_from is None and ckpt is None:
            log.warning("--resume: no checkpoint under %s; starting from step 0", self.out)
        self.prepare(resume_point=ckpt)  # config mistakes that need no Ray fail before Ray starts
        started = connect(self.cfg.resources.address)
        self.local = started  # our own fixed-size instance: infeasible requests fail at once
        done = False
        try:
            self._start_actors()
            if ckpt is not None:
                self._restore(ckpt)
            save_config(self.cfg, self.out)
            self.tracker = tracker = Tracker(self.out, list(self.actor_weights), start_step=self.step)
            try:
                stop = self._revalidate(tracker)  # step 0: the starting model is a candidate for best
                while self.step < self.cfg.meta.steps and not stop:
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
                        if self.validator is not None and self.validator.due(self.step, self.cfg.meta.steps):
                            stop = self._validate()
                            if stop and ckpt is None:  # early stopping: the run ends at a checkpoint
                                ckpt = self._checkpoint()
                    except ray.exceptions.RayError as e:  # a lost actor: back to the last checkpoint, replay
                        self._recover(e, tracker)
                        stop = self._revalidate(tracker)
                        continue
                    for hook in self.hooks:
                        hook(self, record, ckpt)
                # No actor is asked anything from here on (one that dies now changes nothing): the last step always
                # checkpoints, which under reduce: collective pulled rank 0's parameters into the driver, and a resume
                # at the last step restored them there.
                final = export_model(self.out / "final", self.encoder, self.tokenizer, cfg=self.cfg, step=self.step)
                tracker.affinity_png()
                if self.validator is not None:
                    self._log_validation_summary(stop)
            finally:
                tracker.close()
            done = True
            return final
        except SystemExit:  # a hook ended the run at a step's end (Ray Tune stopping a trial in tune.report): the
            done = True     # actors are idle and sound, and may be kept
            raise
        finally:
            self.shutdown(stop_ray=started, keep_actors=done and self.keep_actors)

    # -- meta-validation: which step becomes <output_dir>/best ------------------------------------

    def _validate(self) -> bool:
        """Score the current parameters on the validation tasks; export ``best`` when they beat every step before.
        Returns True when early stopping says stop."""
        assert self.validator is not None
        pulled = False
        if self.collective and self.validator.v.method == "finetune":  # it fine-tunes an export of the driver's copy
            self._pull_from_rank0()
            pulled = True
        record = self.validator(self, self.step)
        self.tracker.validation(record)
        if record["improved"] and self.validator.export_best:
            if self.collective and not pulled:
                self._pull_from_rank0()  # the actors hold the current parameters
            best = {k: record[k] for k in ("step", "score", "ci95", "tasks", "n", "method")}
            card = {"validation_score": record["score"], "validation_step": record["step"],
                    "validation_tasks": list(record["tasks"]),
                    "validation_metric": f"mean accuracy ({record['method']}, eval.validation)"}
            export_model(self.validator.best_dir, self.encoder, self.tokenizer, cfg=self.cfg, step=self.step, card=card,
                         files={BEST_JSON: json.dumps({**best, "validation": self.cfg.eval.validation.model_dump()}, indent=1)})
        return bool(record["stop"])

    def _validate_after_restore(self) -> bool:
        """At step 0, or after a resume or a recovery at step s: the best so far comes back from ``best/``, and the
        validation due at s (whose record the rewind dropped) runs again."""
        if self.validator is None:
            return False
        self.validator.resume(self.step)
        return self._validate() if self.validator.due(self.step, self.cfg.meta.steps) else False

    def _revalidate(self, tracker: Tracker) -> bool:
        """:meth:`_validate_after_restore`, which asks the task actors: one that dies meanwhile is recovered from
        like one lost in a step (same restart limit), then the validation runs again."""
        import ray

        while True:
            try:
                return self._validate_after_restore()
            except ray.exceptions.RayError as e:
                self._recover(e, tracker)

    def _log_validation_summary(self, stopped: bool) -> None:
        assert self.validator is not None
        st, spent = self.validator.state, sum(r["seconds"] for r in self.validator.state.history)
        how = f"stopped early at step {self.step} (no new best for {self.validator.v.early_stopping.patience} " \
              "validations); " if stopped and self.validator.v.early_stopping else ""
        where = f"{self.validator.best_dir}" if self.validator.export_best else "not exported (checkpoint.best: false)"
        log.info("%sbest step %s, validation score %.4f: %s (%d validations, %.1f s)", how, st.best_step, st.best_score,
                 where, len(st.history), spent)

    def shutdown(self, stop_ray: bool = False, keep_actors: bool = False) -> None:
        """End the task actors this trainer started (not reused ones: they belong to their owner), unless
        ``keep_actors``; then Ray too when ``stop_ray`` (this process started it)."""
        import ray

        if not keep_actors:
            kill(self.actors.values() if self.reused is None else ())
            self.actors.clear()
        if hasattr(self, "_torch_threads"):
            torch.set_num_threads(self._torch_threads)
        if stop_ray:
            ray.shutdown()


def train(cfg: ExperimentConfig, *, resume: bool = False) -> Path:
    """Meta-train ``cfg`` and return the final Hugging Face model directory."""
    return MetaTrainer(cfg, resume=resume).run()
