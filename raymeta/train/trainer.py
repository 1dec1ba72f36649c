"""``MetaTrainer``: the one readable outer loop.

Each meta-step reads top to bottom in :meth:`MetaTrainer.run`: step → log → checkpoint →
validate → hooks. The step's state is one object (:class:`~raymeta.train.state.StepState`: θ as
one flat buffer, the outer optimiser, the layout, the mixture, the step), and who computes it
another (:class:`~raymeta.train.state.Workers`); the reducer (:mod:`raymeta.train.reduce`) takes
the step with the two, in the driver or the collective form. Recovery from a lost actor wraps the
loop (:mod:`raymeta.train.recovery`); the checkpoint state is :mod:`raymeta.train.checkpointing`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch

from ..cluster import connect
from ..config import ExperimentConfig, save_config
from ..config.resolve import resolve
from ..core.checkpoint import export_model, load_checkpoint, save_checkpoint
from ..core.jsonio import write_json_atomic
from ..core.trainable import frozen_fingerprint
from ..tasks.holdout import HOLDOUT_JSON, check_same_holdout
from .checkpointing import check_layout, gather_state, restore_state
from .mixture import Mixture
from .outputs import RUN_OUTPUTS, RunOutputs, prepare_output_dir
from .pool import ActorPool, actor_keys
from .record import StepRecord
from .recovery import Recovery
from .reduce import CollectiveReduce, Reducer, choose_reduce, reducer_for
from .state import ReplicaHeads, StepState, Workers, build_state
from .targets import TargetActors
from .tracking import Tracker
from .validation import Validator
from .validation_tasks import target_specs

__all__ = ["MetaTrainer", "RUN_OUTPUTS", "StepHook", "StepRecord", "actor_keys",
           "prepare_output_dir", "train"]

log = logging.getLogger("raymeta.train")


class StepHook(Protocol):
    """Called after every meta-step with its record and the checkpoint saved at it (or None).
    Ray Tune trials use one to score meta-validation and ``tune.report``
    (:mod:`raymeta.tune.search`)."""

    def __call__(self, trainer: MetaTrainer, record: StepRecord,
                 checkpoint: Path | None) -> None: ...


class MetaTrainer:
    def __init__(self, cfg: ExperimentConfig, *, resume: bool = False,
                 resume_from: Path | None = None, hooks: Sequence[StepHook] = (),
                 config_lr: bool = False, actors: Mapping[str, Any] | None = None,
                 keep_actors: bool = False):
        """``resume``: continue from the latest checkpoint in ``output_dir``; ``resume_from``: from
        this checkpoint directory. ``config_lr``: after restoring, use ``optim.lr`` from the config
        instead of the checkpoint's (PBT changes the learning rate between a checkpoint and its
        restore). ``actors``: already started ``TaskActor`` handles keyed like the trainer's
        (``<task>`` or ``<task>#<r>``) to reuse; they are reset to this config and stay alive at
        shutdown (their owner ends them). ``keep_actors``: when :meth:`run` returns normally (or a
        hook ends it with ``SystemExit``), the actors stay alive in ``self.actors`` for the caller
        to reuse or end (a Ray Tune trial hands them to its process's next trial)."""
        # the run's config with everything derived resolved (held-out classes, best), checked once
        run = resolve(cfg)
        self.cfg, self.holdout = run.cfg, run.holdout
        self.resume, self.resume_from, self.config_lr = resume, resume_from, config_lr
        self.hooks = list(hooks)
        # output_dir, or a local staging directory mirrored to it when it is a storage URI
        self.outputs = RunOutputs(self.cfg.output_dir)
        self.out = self.outputs.local
        self.mixture = Mixture(self.cfg)
        # meta.weighting.rule alignment: target actors beside the task actors (checked before Ray)
        self.target_specs = target_specs(self.cfg) \
            if self.cfg.meta.weighting.rule == "alignment" else []
        self.workers = Workers(heads=ReplicaHeads(self.mixture.replicas_of))
        self.reused, self.keep_actors = dict(actors) if actors is not None else None, keep_actors
        self.state: StepState | None = None  # built by prepare(): before Ray starts
        # meta.reduce: auto is resolved once the model and where the actors run are known
        self.reducer = reducer_for(self.cfg, self.cfg.meta.reduce) \
            if self.cfg.meta.reduce != "auto" else Reducer()
        self.local = False  # this process started Ray: infeasible requests fail at once
        self.last_checkpoint: Path | None = None  # where a recovery goes back to
        # looked up at each call: tests and the fault campaign wrap restart_actors on the class
        self.recovery = Recovery(self.cfg.checkpoint.max_actor_restarts,
                                 lost=lambda: self.workers.lost(),
                                 restart=lambda: self.restart_actors(), step=lambda: self.step)
        self.tracker: Tracker | None = None
        # meta-validation (eval.validation): scores steps on held-out tasks, keeps <output_dir>/best
        self.validator = Validator(self.cfg, self.out) \
            if self.cfg.eval.validation is not None else None

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Path | str:
        """Meta-train to ``meta.steps``; returns ``<output_dir>/final`` (an HF model directory; its
        URI when ``output_dir`` is a storage URI)."""
        steps, every = self.cfg.meta.steps, self.cfg.checkpoint.every_steps

        def train_from_here() -> bool:
            """From the current step (0, a resume's or a recovery's) to the end; True when early
            stopping ended it."""
            stop = self.validate_after_restore()
            while self.step < steps and not stop:
                record = self.meta_step()
                self.tracker.step(record)
                last = self.step == steps
                ckpt = self.checkpoint() if self.step % every == 0 or last else None
                if self.validator is not None and self.validator.due(self.step, steps):
                    stop = self.validate()
                    if stop and ckpt is None:  # early stopping: the run ends at a checkpoint
                        ckpt = self.checkpoint()
                for hook in self.hooks:
                    hook(self, record, ckpt)
            return stop

        with self._running():  # Ray, the actors, the resume point restored, the tracker open
            # a lost actor: back to the last checkpoint, and train from there
            stop = self.recovery.run(train_from_here, self._recovered)
            # No actor is asked anything from here on: the last step always checkpoints, which
            # under reduce: collective pulled rank 0's parameters into the driver.
            s = self.state
            share = None if self.validator is None or self.outputs.uri else \
                self.validator.exported_at(s.step)  # best/ of this step: final/ links its weights
            final = export_model(self.out / "final", s.encoder, s.tokenizer, cfg=self.cfg,
                                 step=s.step, share_with=share)
            self.tracker.pictures()  # task affinity, the mixture over the steps, the curves
            if self.validator is not None:
                self.validator.log_summary(self.step, stop, self.outputs.shown)
            self.tracker.flush()
            self.outputs.mirror()
            return final if self.outputs.uri is None else self.outputs.where("final")

    def meta_step(self) -> StepRecord:
        """One outer step in the configured reduce form. Returns its record."""
        s = self.state
        record = self.reducer.step(s, self.workers)
        s.mixture.observe(s.step, record)
        s.step += 1
        return record

    def checkpoint(self) -> Path:
        """Save the step's checkpoint (atomic; mirrored when ``output_dir`` is a storage URI)."""
        s = self.state
        self.workers.heads.flush(self.workers.actors)  # the heads of this step
        self.reducer.pull(s, self.workers)  # the parameters and optimizer of this step
        tensors, state = gather_state(s, self.workers)
        keep = self.cfg.checkpoint.keep_last
        self.last_checkpoint = save_checkpoint(self.out, s.step, encoder=s.encoder,
                                               tokenizer=s.tokenizer, cfg=self.cfg,
                                               tensors=tensors, state=state, keep_last=keep)
        self.tracker.flush()
        self.outputs.checkpoint_saved(self.last_checkpoint, keep)
        return self.last_checkpoint

    def validate(self) -> bool:
        """Score the current parameters on the validation tasks; export ``best`` when the
        validator's rule (``eval.validation.select``) chooses them. True: early stopping says
        stop."""
        v, s = self.validator, self.state
        if v.exports_step:  # finetune scores an export of the driver's copy
            self.reducer.pull(s, self.workers)
        record = v(s, self.workers, self.collective)
        self.tracker.validation(record)
        if record["improved"] and v.export_best:
            if not v.exports_step:  # under reduce: collective the actors hold the current θ
                self.reducer.pull(s, self.workers)
            v.export(record, s)
        return bool(record["stop"])

    def validate_after_restore(self) -> bool:
        """At step 0, or after a resume or a recovery at step s: the best so far comes back from
        ``best/``, and the validation due at s (whose record the rewind dropped) runs again."""
        if self.validator is None:
            return False
        self.validator.resume(self.step)
        return self.validate() if self.validator.due(self.step, self.cfg.meta.steps) else False

    # -- around the loop: set-up, Ray, restore, recovery, shutdown -------------------------------

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Everything around the loop: the resume point, Ray (our own instance when none runs),
        the actors, the restored checkpoint, ``config.yaml`` and the tracker; at the end, shutdown.
        The actors stay (with ``keep_actors``) when the run ends normally or a hook ends it with
        ``SystemExit`` (Ray Tune stopping a trial in ``tune.report``): they are idle and sound."""
        self.outputs.check_writable()  # a missing bucket or refused credentials: one line, first
        ckpt = self.outputs.start_point(resume=self.resume, resume_from=self.resume_from)
        if self.holdout is not None and ckpt is not None and (self.out / HOLDOUT_JSON).is_file():
            check_same_holdout(json.loads((self.out / HOLDOUT_JSON).read_text()), self.holdout)
        self.prepare(resume_point=ckpt)  # config mistakes that need no Ray fail before Ray starts
        started = self.local = connect(self.cfg.resources.address)
        import ray

        sound = False
        try:
            self.last_checkpoint = ckpt
            try:  # an actor lost meanwhile is recovered from as one lost in a step is
                self.start_actors()
                if ckpt is not None:
                    self.restore(ckpt)
            except ray.exceptions.RayError as e:
                self.recovery.recover(e, self._recovered)
            save_config(self.cfg, self.out)
            self.workers.save_assignment(self.out)  # resources.workers: workers.json
            if self.holdout is not None:  # the classes meta-training never saw: validation's
                write_json_atomic(self.out / HOLDOUT_JSON, self.holdout)
            self.tracker = Tracker(self.out, list(self.mixture.actor_weights), start_step=self.step)
            with contextlib.closing(self.tracker):
                yield
            sound = True
        except SystemExit:
            sound = True
            raise
        finally:
            self.shutdown(stop_ray=started, keep_actors=sound and self.keep_actors)
            self.outputs.close()

    def prepare(self, *, resume_point: Path | None = None) -> None:
        """What needs no Ray: the driver's encoder, flat buffer and optimizer (step 0's state), and
        the layout check of ``resume_point``. :meth:`run` calls it before connecting, so that a
        model that cannot be built as configured (LoRA targets, top layers) or a checkpoint of
        another layout fails in a second, not after a local Ray instance has started."""
        self.state = build_state(self.cfg, self.mixture)
        if resume_point is not None:
            check_layout(resume_point, load_checkpoint(resume_point)[1], self.state)

    def start_actors(self) -> None:
        """The task and target actors (reused ones reset, else started), checked against the
        driver's layout, joined as the reducer needs them (a group under ``reduce: collective``)."""
        s, w = self.state, self.workers
        if self.local and not hasattr(self, "_torch_threads"):
            # On our own instance the actors take every CPU, so the driver's reduction and outer
            # step run on one torch thread (until shutdown): with two, each small op waits for a
            # second OpenMP thread that stalls whenever the other CPU is busy
            # (benchmarks/results/throughput.md#optimisations-before-and-after).
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        t = self.target_specs
        w.targets = TargetActors(self.cfg, t, ActorPool()) if t else None
        mem, tmem = s.actor_memory(), s.actor_memory(w.targets.cfg) if t else None  # to fit, both
        if self.reused is not None:
            w.pool.adopt(self.reused, self.cfg)
        else:
            w.pool.start(self.cfg, local=self.local, others=len(self.target_specs), memory=mem,
                         memory_others=list((tmem or {}).values()))
        frozen = frozen_fingerprint(s.encoder)
        self.placement = w.pool.check(s.layout, frozen)
        if w.targets is not None:
            w.targets.start(local=self.local, others=w.pool.processes, layout=s.layout,
                            frozen=frozen, memory=tmem, memory_others=w.pool.declared)
        if type(self.reducer) is Reducer:  # meta.reduce: auto, first start: once, for the run
            mode, why = choose_reduce(s, w, self.placement, self.last_checkpoint)
            log.info("meta.reduce: auto -> %s (%s)", mode, why)
            # the choice goes into the saved config.yaml, which reloads as the same run
            self.cfg = s.cfg = self.cfg.model_copy(
                update={"meta": self.cfg.meta.model_copy(update={"reduce": mode})})
            self.reducer = reducer_for(self.cfg, mode)
        self.reducer.join(s, self.workers)

    def restore(self, path: Path) -> None:
        """Back to the checkpoint at ``path``: the driver, every actor, the mixture, the step."""
        restore_state(path, self.state, self.workers, config_lr=self.config_lr)
        self.reducer.push(self.state, self.workers)
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", self.outputs.shown(path), self.step)

    def restart_actors(self) -> None:
        """Every actor anew, back at the last checkpoint (or the initial weights, step 0)."""
        self.shutdown()
        self.workers.heads.pending = {}
        if self.last_checkpoint is None:  # really the initial weights, optimizer and mixture
            self.mixture = Mixture(self.cfg)
            self.state = build_state(self.cfg, self.mixture)
        self.start_actors()
        if self.last_checkpoint is not None:
            self.restore(self.last_checkpoint)

    def _recovered(self, names: str, failed: int) -> None:
        if self.tracker is not None:  # None while the actors first start: nothing logged yet
            self.tracker.rewind(self.step)
        back = f"checkpoint step {self.step} ({self.outputs.shown(self.last_checkpoint)})" \
            if self.last_checkpoint else "the initial weights (step 0: no checkpoint yet)"
        log.warning("task %s: actor died at step %d; restarted every task actor from %s "
                    "(restart %d of %d)", names, failed, back, self.recovery.restarts,
                    self.recovery.limit)

    def shutdown(self, stop_ray: bool = False, keep_actors: bool = False) -> None:
        """End the task actors this trainer started (not reused ones: their owner ends them),
        unless ``keep_actors``; then Ray too when ``stop_ray`` (this process started it)."""
        import ray

        self.workers.release(keep_actors=keep_actors)
        if hasattr(self, "_torch_threads"):
            torch.set_num_threads(self._torch_threads)
            del self._torch_threads
        if stop_ray:
            ray.shutdown()

    # -- what `raymeta speed`, Ray Tune's hooks and the tests read or call -------------------------

    @property
    def step(self) -> int:
        """The steps taken."""
        return self.state.step if self.state is not None else 0

    @property
    def actors(self) -> dict[str, Any]:
        """Actor key -> ``TaskActor`` handle, in task order."""
        return self.workers.actors

    @property
    def collective(self) -> bool:
        """The parameters live on the actors (``reduce: collective``)."""
        return self.reducer.collective

    @property
    def last_meta_grad(self) -> torch.Tensor | None:
        """reduce: driver: the last step's meta-gradient (clipped in place with max_grad_norm)."""
        return self.reducer.last_meta_grad

    def setup(self, *, local: bool | None = None, resume_point: Path | None = None) -> None:
        """Everything before the first meta-step, as :meth:`run` does it: :meth:`prepare`, then the
        actors. ``raymeta speed`` and tests call it, then :meth:`meta_step`, to time or check
        exactly what training runs. ``local``: this process started the Ray instance."""
        if local is not None:
            self.local = local
        self.prepare(resume_point=resume_point)
        self.start_actors()

    def use_collective(self) -> None:
        """After :meth:`setup` under ``reduce: driver``: the same actors form a process group and
        the next steps reduce collectively (``raymeta speed`` times both on one set of actors)."""
        if not self.reducer.collective:
            self.reducer = CollectiveReduce(self.cfg.meta.overlap)
            self.reducer.join(self.state, self.workers)

    def set_overlap(self, overlap: bool) -> None:
        """``meta.overlap`` from the next step on, in the current reduce form."""
        self.reducer.set_overlap(self.workers, overlap)


def train(cfg: ExperimentConfig, *, resume: bool = False) -> Path | str:
    """Meta-train ``cfg``; returns the final Hugging Face model directory (or its URI)."""
    return MetaTrainer(cfg, resume=resume).run()
