"""``MetaTrainer``: the one readable outer loop.

Each meta-step reads top to bottom (:meth:`MetaTrainer.run`): step → log → checkpoint → validate → hooks. The step
is the reducer's (:mod:`raymeta.train.reduce`): under ``meta.reduce: driver`` the driver publishes its parameters
(one ``ray.put``), the actors compute their task gradients, the driver reduces Σ wᵢ gᵢ and takes the outer AdamW
step; under ``collective`` the actors all-reduce among themselves and each applies the same step
(:mod:`raymeta.train.collective`), and the driver pulls the parameters and optimizer state from rank 0 when it
checkpoints. The task actors come from an :class:`~raymeta.train.pool.ActorPool`; a lost one is recovered from
around the loop (:meth:`MetaTrainer._recovering`), never inside it.

The driver holds the shared encoder, with every parameter a view into one flat float32 buffer: publishing is one
zero-copy put, and the meta-gradient unflattens into ``.grad`` views without copies. It never holds task data: the
actors load it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, TypeVar

import numpy as np
import torch
import yaml

from ..config import ExperimentConfig, save_config
from ..core.checkpoint import export_model, load_checkpoint, load_encoder_weights, save_checkpoint
from ..core.combine import normalise_weights
from ..core.costmodel import A100, default_reduce
from ..core.jsonio import write_json_atomic
from ..core.model import load_encoder, load_tokenizer
from ..core.optim import optimizer_from_tensors, optimizer_tensors, outer_optimizer
from ..core.trainable import frozen_fingerprint, layout_signature, trainable_summary
from ..core.weighting import AlignmentWeights
from ..errors import ConfigError, RaymetaError
from ..runtime import connect
from ..tasks.holdout import HOLDOUT_JSON, check_same_holdout, resolve_holdout
from .actor import bind_flat, replica_key
from .outputs import RUN_OUTPUTS, RunOutputs, held_outputs, remove_outputs
from .pool import ActorPool, actor_keys
from .record import StepRecord
from .reduce import CollectiveReduce, Reducer, ReplicaHeads, reducer_for
from .targets import TargetActors
from .tracking import Tracker
from .validation import Validator, target_specs, wants_best

__all__ = ["MetaTrainer", "RUN_OUTPUTS", "StepHook", "StepRecord", "actor_keys", "prepare_output_dir", "train"]

log = logging.getLogger("raymeta.train")

T = TypeVar("T")


def _check_config(cfg: ExperimentConfig) -> None:
    if not cfg.tasks:
        raise ConfigError("config key 'tasks': no meta-training task given")
    if cfg.meta.algorithm == "reptile" and cfg.meta.inner_steps == 0:
        raise ConfigError("config key 'meta.inner_steps': reptile needs at least 1 inner step (got 0)")
    if cfg.meta.reduce == "collective" and cfg.meta.combine == "pcgrad":
        raise ConfigError("config key 'meta.combine': pcgrad needs every task's gradient in one place; "
                          "use meta.reduce=driver")
    wants_best(cfg)  # checkpoint.best without validation tasks: one line, before anything starts
    fault = cfg.meta.fault_injection
    keys = [replica_key(t.name, r) for t in cfg.tasks for r in range(t.replicas)]
    if fault is not None and fault.task not in keys:
        raise ConfigError(f"config key 'meta.fault_injection.task': no task '{fault.task}' (tasks: {', '.join(keys)})")


class StepHook(Protocol):
    """Called after every meta-step with its record and the checkpoint saved at it (or None).
    Ray Tune trials use one to score meta-validation and ``tune.report`` (:mod:`raymeta.tune.search`)."""

    def __call__(self, trainer: MetaTrainer, record: StepRecord, checkpoint: Path | None) -> None: ...


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
        _check_config(cfg)
        # eval.validation.holdout_classes: the tasks restricted to their kept classes, the held ones as validation
        # tasks (raymeta.tasks.holdout); this resolved config is the run's (and config.yaml), the choice is saved apart
        cfg, self.holdout = resolve_holdout(cfg)
        self.cfg, self.resume, self.resume_from = cfg, resume, resume_from
        self.hooks, self.config_lr = list(hooks), config_lr
        # output_dir, or a local staging directory mirrored to it when it is a storage URI (s3://...)
        self.outputs = RunOutputs(cfg.output_dir)
        self.out = self.outputs.local
        self.weights = normalise_weights({t.name: t.weight for t in cfg.tasks})
        # one actor per task replica, keyed "<task>" or "<task>#<r>"; a replica carries w / replicas
        self.replicas_of = actor_keys(cfg)
        self.actor_weights = self._actor_weights()
        # meta.weighting.rule alignment: the weights follow each task's gradient's agreement with the target tasks'
        # (raymeta.core.weighting), whose actors start beside the task actors; targets checked before Ray starts
        self.target_specs = target_specs(cfg) if cfg.meta.weighting.rule == "alignment" else []
        self.targets: TargetActors | None = None
        self.task_weighting = self._fresh_weighting()
        self.heads = ReplicaHeads(self.replicas_of)  # replicas: averaged head gradient, applied with the next call
        self.pool = ActorPool()
        self.reused = dict(actors) if actors is not None else None
        self.keep_actors = keep_actors
        self.step = 0
        # meta.reduce: auto is resolved once the model's size and where the actors run are known (_start_actors)
        self.reducer: Reducer = reducer_for(cfg, cfg.meta.reduce) if cfg.meta.reduce != "auto" else Reducer()
        self.local = False
        self.last_checkpoint: Path | None = None  # written or restored by this run: where a recovery goes back to
        self.restarts = 0  # actor-crash recoveries so far (checkpoint.max_actor_restarts)
        # meta-validation (eval.validation): scores steps on held-out tasks, keeps <output_dir>/best
        self.validator = Validator(cfg, self.out) if cfg.eval.validation is not None else None

    @property
    def actors(self) -> dict[str, Any]:
        """Actor key -> ``TaskActor`` handle, in task order."""
        return self.pool.actors

    @property
    def collective(self) -> bool:
        """The parameters live on the actors (``reduce: collective``)."""
        return self.reducer.collective

    @property
    def last_meta_grad(self) -> torch.Tensor | None:
        """reduce: driver: the last step's meta-gradient (clipped in place when ``optim.max_grad_norm`` is set)."""
        return self.reducer.last_meta_grad

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Path | str:
        """Meta-train to ``meta.steps``; returns ``<output_dir>/final`` (an HF model directory; its URI when
        ``output_dir`` is a storage URI)."""
        steps, every = self.cfg.meta.steps, self.cfg.checkpoint.every_steps

        def train_from_here() -> bool:
            """From the current step (0, a resume's or a recovery's) to the end; True when early stopping ended it."""
            stop = self._validate_after_restore()
            while self.step < steps and not stop:
                record = self.meta_step()
                self.tracker.step(record)
                ckpt = self._checkpoint() if self.step % every == 0 or self.step == steps else None
                if self.validator is not None and self.validator.due(self.step, steps):
                    stop = self._validate()
                    if stop and ckpt is None:  # early stopping: the run ends at a checkpoint
                        ckpt = self._checkpoint()
                for hook in self.hooks:
                    hook(self, record, ckpt)
            return stop

        with self._running():  # Ray, the task actors, the resume point restored, the tracker open
            stop = self._recovering(train_from_here)  # a lost actor: back to the last checkpoint, train from there
            # No actor is asked anything from here on (one that dies now changes nothing): the last step always
            # checkpoints, which under reduce: collective pulled rank 0's parameters into the driver, and a resume
            # at the last step restored them there.
            final = export_model(self.out / "final", self.encoder, self.tokenizer, cfg=self.cfg, step=self.step)
            self.tracker.affinity_png()
            self.tracker.weights_png()  # meta.weighting.rule alignment: the mixture over the steps
            if self.validator is not None:
                self._log_validation_summary(stop)
            self.tracker.flush()
            self.outputs.mirror()
            return final if self.outputs.uri is None else self.outputs.where("final")

    def meta_step(self) -> StepRecord:
        """One outer step in the configured reduce form (:mod:`raymeta.train.reduce`). Returns its record."""
        record = self.reducer.step(self)
        if self.task_weighting is not None and record.alignment is not None:
            self._reweight(record.alignment)
        self.step += 1
        return record

    # -- meta.weighting.rule: alignment ------------------------------------------------------------

    def _fresh_weighting(self) -> AlignmentWeights | None:
        """Step 0's learned weights (z = 0), applied to the actors' mixture; None under ``rule: fixed``."""
        w = self.cfg.meta.weighting
        if w.rule != "alignment":
            return None
        self.task_weighting = AlignmentWeights(normalise_weights({t.name: t.weight for t in self.cfg.tasks}), w.lr,
                                               w.floor, w.every_steps)
        self._apply_weights()
        return self.task_weighting

    def _apply_weights(self) -> None:
        assert self.task_weighting is not None
        self.weights = self.task_weighting.weights()
        self.actor_weights = self._actor_weights()

    def _actor_weights(self) -> dict[str, float]:
        """Actor key -> its share of the mixture: its task's weight over the task's replicas."""
        return {key: self.weights[name] / len(keys) for name, keys in self.replicas_of.items() for key in keys}

    def _reweight(self, alignment: Mapping[str, float]) -> None:
        """After step ``self.step``: each task's cosine with g_target (the mean over its replicas' finite ones) moves
        its log-weight, every ``meta.weighting.every_steps``; the next step uses the new mixture."""
        assert self.task_weighting is not None
        per_task = {}
        for name, keys in self.replicas_of.items():
            cs = [alignment[k] for k in keys if alignment.get(k) is not None and math.isfinite(alignment[k])]
            per_task[name] = float(np.mean(cs)) if cs else math.nan
        if self.task_weighting.due(self.step):
            self.task_weighting.update(per_task)
            self._apply_weights()

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Everything around the loop: the resume point, Ray (our own instance when none runs), the task actors,
        the restored checkpoint, ``config.yaml`` and the tracker; at the end, shutdown. The actors stay (with
        ``keep_actors``) when the run ends normally or a hook ends it with ``SystemExit`` (Ray Tune stopping a
        trial in ``tune.report``): they are idle and sound then."""
        self.outputs.check_writable()  # a missing bucket or refused credentials: one line, before anything runs
        ckpt = Path(self.resume_from) if self.resume_from is not None else \
            self.outputs.resume_point() if self.resume else None
        if self.resume and self.resume_from is None and ckpt is None:  # a typo in output_dir must not train anew
            how = "start it over with --overwrite instead of --resume" if held_outputs(self.cfg.output_dir) else \
                "leave out --resume to start from step 0"
            raise RaymetaError(f"--resume: no complete checkpoint to resume from under output_dir {self.outputs} "
                               f"({how})")
        if self.holdout is not None and ckpt is not None and (self.out / HOLDOUT_JSON).is_file():
            check_same_holdout(json.loads((self.out / HOLDOUT_JSON).read_text()), self.holdout)  # the same split
        self.prepare(resume_point=ckpt)  # config mistakes that need no Ray fail before Ray starts
        started = connect(self.cfg.resources.address)
        self.local = started  # our own fixed-size instance: infeasible requests fail at once
        sound = False
        try:
            self._start_and_restore(ckpt)
            save_config(self.cfg, self.out)
            if self.holdout is not None:  # which classes meta-training never saw: validation's (eval.validation)
                write_json_atomic(self.out / HOLDOUT_JSON, self.holdout)
            self.tracker = Tracker(self.out, list(self.actor_weights), start_step=self.step)
            with contextlib.closing(self.tracker):
                yield
            sound = True
        except SystemExit:
            sound = True
            raise
        finally:
            self.shutdown(stop_ray=started, keep_actors=sound and self.keep_actors)
            self.outputs.close()

    # -- set-up ---------------------------------------------------------------------------

    def setup(self, *, local: bool | None = None, resume_point: Path | None = None) -> None:
        """Everything before the first meta-step: the driver's encoder, flat buffer and optimizer, then the
        task actors (started, or the ones given to reuse, reset), checked against the driver's layout, in a
        process group under ``reduce: collective``. :meth:`run` starts with it; ``raymeta speed`` and tests
        call it, then :meth:`meta_step`, to time or check exactly what training runs.
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
        steps reduce collectively (``raymeta speed`` times both modes on one set of actors)."""
        if not self.reducer.collective:
            self.reducer = CollectiveReduce(self.cfg.meta.overlap)
            self.reducer.join(self)

    def set_overlap(self, overlap: bool) -> None:
        """``meta.overlap`` from the next step on, in the current reduce form (``raymeta speed`` times both)."""
        self.reducer.set_overlap(self, overlap)

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
        """The task actors (the ones given to reuse, reset; else new ones), checked against the driver's layout,
        joined the way the reducer needs them (a process group under ``reduce: collective``)."""
        if self.local and not hasattr(self, "_torch_threads"):
            # On our own instance the actors take every CPU of this machine, so the driver's reduction and outer
            # step run on one torch thread (until shutdown). With two, each small op waits for the second OpenMP
            # thread, which stalls whenever the other CPU is busy: on the shared 2-CPU VM MiniLM's reduction took
            # 585 ms on 2 threads and 23 ms on 1 (benchmarks/driver_ops.py, benchmarks/RESULTS.md §5.5).
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        if self.reused is not None:
            self.pool.adopt(self.reused, self.cfg)
        else:
            self.pool.start(self.cfg, local=self.local, others=len(self.target_specs))
        self.placement = self.pool.check(self.layout, frozen_fingerprint(self.encoder))
        if self.target_specs:
            self.targets = TargetActors(self.cfg, self.target_specs)
            self.targets.start(local=self.local, others=len(self.actor_weights), layout=self.layout,
                               frozen=frozen_fingerprint(self.encoder))
        if type(self.reducer) is Reducer:  # meta.reduce: auto, first start: choose once, for the whole run
            self._choose_reduce()
        self.reducer.join(self)

    def _choose_reduce(self) -> None:
        """``meta.reduce: auto``: the form the cost model (:func:`raymeta.core.costmodel.default_reduce`) says is
        faster for these actors, this many trainable parameters and where they run; the run it resumes chose one
        already (its checkpoint's config.yaml), and that one is kept. The choice goes into the config saved with
        the run, so that ``config.yaml`` reloads as the same run."""
        import ray

        mode, why = self._resumed_reduce(), "the form of the run this one resumes"
        if mode is None:
            nodes = set(self.placement.values()) | {ray.util.get_node_ip_address()}
            episode = self.cfg.meta.episode
            seqs = episode.ways * (episode.shots + episode.queries)
            tokens = seqs * max(t.max_length for t in self.cfg.tasks)
            gpus = "cuda" in self.pool.devices.values()  # then A100-class compute, 40% MFU (the model's default GPU)
            mode, why = default_reduce(len(self.actor_weights), self.layout.numel,
                                       sum(p.numel() for p in self.encoder.parameters()), tokens,
                                       local=len(nodes) == 1, combine=self.cfg.meta.combine, device=A100 if gpus else None)
        log.info("meta.reduce: auto -> %s (%s)", mode, why)
        self.cfg = self.cfg.model_copy(update={"meta": self.cfg.meta.model_copy(update={"reduce": mode})})
        self.reducer = reducer_for(self.cfg, mode)

    def _resumed_reduce(self) -> str | None:
        if self.last_checkpoint is None or not (self.last_checkpoint / "config.yaml").is_file():
            return None
        saved = yaml.safe_load((self.last_checkpoint / "config.yaml").read_text()) or {}
        mode = (saved.get("meta") or {}).get("reduce")
        return mode if mode in ("driver", "collective") else None

    def _start_and_restore(self, ckpt: Path | None) -> None:
        """The task actors, then the checkpoint to resume from restored into them and the driver. An actor lost
        meanwhile is recovered from as one lost in a step is: every actor anew, back to ``ckpt`` (or step 0)."""
        import ray

        self.last_checkpoint = ckpt
        try:
            self._start_actors()
            if ckpt is not None:
                self._restore(ckpt)
        except ray.exceptions.RayError as e:
            self._recover(e)

    # -- recovery from a lost task actor --------------------------------------------------------

    def _recovering(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, again after each recovery from a lost task actor (:meth:`_recover`) until it returns:
        the recovery goes back to the last checkpoint, so the attempt replays the lost steps."""
        import ray

        while True:
            try:
                return attempt()
            except ray.exceptions.RayError as e:
                self._recover(e)

    def _recover(self, err: Exception) -> None:
        """A task actor died: restart every actor, go back to this run's last checkpoint (or to the
        initial weights) and rewind the log, for the loop to replay the lost steps. Replays are bit-exact: every
        random draw derives from (seed, task, step). A Ray error with every actor alive is re-raised as it is.
        An actor that dies while the actors restart costs one more restart (the same limit), not a traceback."""
        import ray

        lost = self._lost()
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
                lost = self._lost()
                if not lost:
                    raise again
                latest = ", ".join(f"'{k}'" for k in lost)
                log.warning("task %s: actor died while the task actors restarted (restart %d of %d)",
                            latest, self.restarts, limit)
        if getattr(self, "tracker", None) is not None:  # None while the actors first start: nothing logged yet
            self.tracker.rewind(self.step)
        back = f"checkpoint step {self.step} ({self.outputs.shown(self.last_checkpoint)})" if self.last_checkpoint else \
            "the initial weights (step 0: no checkpoint yet)"
        log.warning("task %s: actor died at step %d; restarted every task actor from %s (restart %d of %d)",
                    names, failed, back, self.restarts, limit)

    def _lost(self) -> list[str]:
        """The task actors, and target actors, that died."""
        return self.pool.lost() + (self.targets.lost() if self.targets is not None else [])

    def _restart_actors(self) -> None:
        """Every actor anew, back at the last checkpoint (or the initial weights, step 0)."""
        # Every actor, not only the lost one: a process group cannot re-form around a lost rank, and the
        # survivors' heads have moved past the checkpoint.
        self.shutdown()
        self.heads.pending = {}
        if self.last_checkpoint is None:
            self._build_driver_model()  # really the initial weights, with a fresh optimizer and schedule
            self.task_weighting = self._fresh_weighting()
            self.step = 0
        self._start_actors()
        if self.last_checkpoint is not None:
            self._restore(self.last_checkpoint)

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
        if self.task_weighting is not None:  # the learned log-weights: a resume or a replay continues from them
            state["task_weighting"] = self.task_weighting.state()
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
        if self.task_weighting is not None and "task_weighting" in state:
            self.task_weighting.load_state(state["task_weighting"])
            self._apply_weights()
        self.reducer.push(self)
        self.step = int(state["step"])
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", self.outputs.shown(path), self.step)

    def _check_layout(self, path: Path, state: dict[str, Any]) -> None:
        """The checkpoint holds exactly the parameters this run trains (same mode, names, shapes)."""
        mine = layout_signature(self.cfg.model, self.layout.names, self.layout.numel)
        theirs = state.get("layout", {"trainable": "full", "numel": None, "names_crc32": None})  # older checkpoints
        if theirs["trainable"] != mine["trainable"] or theirs.get("names_crc32") not in (None, mine["names_crc32"]):
            raise ConfigError(f"checkpoint {path}: its trainable layout ({theirs['trainable']}, {theirs['numel']} values) "
                              f"differs from this run's ({mine['trainable']}, {mine['numel']} values); resume with the "
                              "checkpoint's model.trainable / model.lora / model.top_layers")

    def _checkpoint(self) -> Path:
        self.heads.flush(self.actors)  # the heads of this step
        self.reducer.pull(self)  # the parameters and optimizer of this step
        tensors, state = self._state()
        self.last_checkpoint = save_checkpoint(self.out, self.step, encoder=self.encoder, tokenizer=self.tokenizer,
                                               cfg=self.cfg, tensors=tensors, state=state,
                                               keep_last=self.cfg.checkpoint.keep_last)
        self.tracker.flush()
        self.outputs.checkpoint_saved(self.last_checkpoint, self.cfg.checkpoint.keep_last)
        return self.last_checkpoint

    # -- meta-validation: which step becomes <output_dir>/best ------------------------------------

    def _validate(self) -> bool:
        """Score the current parameters on the validation tasks (at each of ``eval.validation.settings``); export
        ``best`` when the validator's rule (``eval.validation.select``) chooses them. Returns True when early
        stopping says stop."""
        assert self.validator is not None
        exported = any(p is None for p in self.validator.protocols)  # finetune: an export of the driver's copy
        if exported:
            self.reducer.pull(self)
        record = self.validator(self, self.step)
        self.tracker.validation(record)
        if record["improved"] and self.validator.export_best:
            if not exported:
                self.reducer.pull(self)  # under reduce: collective the actors hold the current parameters
            v = self.validator
            metric = f"mean accuracy ({record['method']}, eval.validation)" if v.v.settings is None else \
                f"mean accuracy over settings {', '.join(v.names)} (eval.validation, select: {v.select})"
            card = {"validation_score": record["score"], "validation_step": record["step"],
                    "validation_tasks": list(record["tasks"]), "validation_metric": metric}
            # raymeta_best.json (and step 0's values, for a resume) travel with the weights, in one atomic export
            export_model(v.best_dir, self.encoder, self.tokenizer, cfg=self.cfg, step=self.step, card=card,
                         files=v.best_files(record))
        return bool(record["stop"])

    def _validate_after_restore(self) -> bool:
        """At step 0, or after a resume or a recovery at step s: the best so far comes back from ``best/``, and the
        validation due at s (whose record the rewind dropped) runs again."""
        if self.validator is None:
            return False
        self.validator.resume(self.step)
        return self._validate() if self.validator.due(self.step, self.cfg.meta.steps) else False

    def _log_validation_summary(self, stopped: bool) -> None:
        assert self.validator is not None
        st, spent = self.validator.state, sum(r["seconds"] for r in self.validator.state.history)
        how = f"stopped early at step {self.step} (no new best for {self.validator.v.early_stopping.patience} " \
              "validations); " if stopped and self.validator.v.early_stopping else ""
        where = self.outputs.shown(self.validator.best_dir) if self.validator.export_best else \
            "not exported (checkpoint.best: false)"
        rule = f" (select: {self.validator.select})" if self.validator.detailed else ""
        log.info("%sbest step %s%s, validation score %.4f: %s (%d validations, %.1f s)", how, st.best_step, rule,
                 st.best_score, where, len(st.history), spent)
        for line in self.validator.table():  # per step: each setting's paired gain over step 0, qualifies, the chosen
            log.info("%s", line)

    def shutdown(self, stop_ray: bool = False, keep_actors: bool = False) -> None:
        """End the task actors this trainer started (not reused ones: they belong to their owner), unless
        ``keep_actors``; then Ray too when ``stop_ray`` (this process started it)."""
        import ray

        if not keep_actors:
            self.pool.release()
        if self.targets is not None:
            self.targets.release()
            self.targets = None
        if hasattr(self, "_torch_threads"):
            torch.set_num_threads(self._torch_threads)
            del self._torch_threads
        if stop_ray:
            ray.shutdown()


def prepare_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Before ``raymeta train`` writes into ``output_dir``, as Hugging Face's ``overwrite_output_dir`` has it: a
    directory that already holds a run is refused unless the run is continued (``--resume``) or started over
    (``--overwrite``, which first removes that run's outputs, so that no old metrics, checkpoints or TensorBoard
    events mix with the new ones). Files of the user's own in the directory are left alone."""
    out = str(output_dir)
    if resume and overwrite:
        raise RaymetaError("--resume continues the run in output_dir, --overwrite starts it over: give one of them")
    held = held_outputs(out)
    if resume or not held:
        return
    if not overwrite:
        raise RaymetaError(f"output_dir {out} already holds a run ({', '.join(held)}): add --resume to continue it, "
                           "or --overwrite to start it over")
    remove_outputs(out, held)
    log.warning("--overwrite: removed the previous run's %s from %s", ", ".join(held), out)


def train(cfg: ExperimentConfig, *, resume: bool = False) -> Path | str:
    """Meta-train ``cfg`` and return the final Hugging Face model directory (its URI when ``output_dir`` is one)."""
    return MetaTrainer(cfg, resume=resume).run()
