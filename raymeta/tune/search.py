"""``raymeta tune``: Ray Tune over task mixtures and learning rates, scored few-shot on
meta-validation.

Each trial is a full meta-training run (:class:`~raymeta.train.trainer.MetaTrainer`) with its own
task actors. The trial reserves one placement group: bundle 0 for itself (it also scores
validation), one bundle per task actor, so concurrent trials never compete for CPUs or GPUs, and
trials that do not fit wait for a whole group instead of deadlocking half-started. Every
``tune.eval_every`` steps the trial checkpoints, scores prototype accuracy of seeded N-way K-shot
episodes on the
**meta-validation** tasks, and calls ``tune.report`` with the checkpoint, so ASHA (Li et al. 2020)
can stop it and PBT (Jaderberg et al. 2017) can clone and perturb it. Meta-test tasks are never
seen here: :mod:`raymeta.tune.report` scores them once, after the search.

A trial's score comes from ``tune.validation_tasks``. Without them,
``eval.validation.holdout_classes`` gives them (:func:`tune_holdout`): the classes it holds back of
each meta-training task, resolved once before the first trial, so every trial meta-trains on the
same kept classes and is ranked on the same held ones, which no trial trains on; the choice is saved
as ``holdout_classes.json`` beside ``best_config.yaml`` (the resolved config: it reloads as the same
run). This is the in-domain search of a user who has only their training tasks. With explicit
``tune.validation_tasks`` as well, those rank the trials, and each trial's trainer resolves
``holdout_classes`` for its own ``best`` (:mod:`raymeta.tasks.holdout`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..config import ExperimentConfig
from ..config.resolve import resolve
from ..core.jsonio import write_json_atomic
from ..errors import ConfigError, RaymetaError
from ..tasks.holdout import HOLDOUT_JSON, task_labels
from ..train.outputs import RunOutputs
from ..train.pool import ActorPool, target_count
from ..train.record import StepRecord
from ..train.validation_tasks import held_back
from .scoring import METRIC, FewShotScorer, task_specs, validation_scorer
from .space import WEIGHT_PREFIX, search_space

# (the scorer and METRIC: re-exported)
__all__ = ["FewShotScorer", "run_tune", "check_tune_config", "experiment_path", "tune_holdout",
           "METRIC"]

log = logging.getLogger("raymeta.tune")

def experiment_path(cfg: ExperimentConfig) -> str:
    """Where Tune keeps the experiment: ``tune.storage_path`` (a URI on clusters) / name."""
    where = cfg.tune.storage_path or storage.absolute(storage.join(cfg.output_dir, "tune"))
    return f"{where.rstrip('/')}/{cfg.name}"


# The task actors of the last trial that ran in this process (``tune.reuse_actors``). Ray Tune hands
# a finished trial's driver, with its placement group, to the next trial that asks for the same
# resources; that trial resets these actors (``TaskActor.reset``) instead of starting new ones, each
# of which costs seconds (importing torch and transformers, loading the model; on a GPU, a CUDA
# context too). They sit in the bundles of that same placement group, and die with this process
# (their owner) when Tune ends it.
_kept = ActorPool()


def _trial(params: dict[str, Any], *, base_json: str, pbt: bool) -> None:
    """One Tune trial: meta-train with the sampled mixture and rates; report validation and
    checkpoints."""
    from ray import tune

    from ..train.trainer import MetaTrainer
    from .space import apply_params

    base = ExperimentConfig.model_validate_json(base_json)
    cfg = apply_params(base, params)
    trial_dir = Path(tune.get_context().get_trial_dir())
    cfg.output_dir = str(trial_dir / "run")
    cfg.checkpoint.every_steps = cfg.tune.eval_every
    cfg.checkpoint.keep_last = 2
    # A failed actor fails the trial: Tune's FailureConfig retries it from its last reported
    # checkpoint (and gives it a fresh placement group), instead of the trainer restarting actors in
    # place.
    cfg.checkpoint.max_actor_restarts = 0
    scorer = validation_scorer(cfg)
    resume_from = None
    restored = tune.get_checkpoint()
    if restored is not None:  # a retry after a failure, a PBT exploit, or Tuner.restore
        # a scratch copy, not the trial dir: artifacts there are synced to storage
        resume_from = Path(restored.to_directory(tempfile.mkdtemp(prefix="raymeta-restore-")))
    resumed_at = 0
    # None: the ones kept (if any) are ended
    reused = _kept.lend(cfg) if cfg.tune.reuse_actors else None
    if reused is None:
        _kept.release()

    def report(trainer: MetaTrainer, record: StepRecord, ckpt: Path | None) -> None:
        if ckpt is None:
            return
        per_task = scorer(trainer.state.encoder)
        score = float(np.mean(list(per_task.values())))
        metrics = {METRIC: score, "step": trainer.step, "resumed_at": resumed_at,
                   "grad_norm": record.grad_norm,
                   "reused_actors": reused is not None,
                   **{f"val/{k}": v for k, v in per_task.items()},
                   **{f"loss/{k}": v for k, v in record.loss.items()},
                   **{f"mixture/{k}": v for k, v in trainer.mixture.weights.items()}}
        trainer.tracker.scalars({"val/score": score, **{f"val/{k}": v for k,
                                                        v in per_task.items()}}, trainer.step)
        log.info("step %d: meta-validation %.4f %s", trainer.step, score, per_task)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))

    trainer = MetaTrainer(cfg, resume_from=resume_from, hooks=[report], config_lr=pbt,
                          actors=reused,
                          keep_actors=cfg.tune.reuse_actors)
    try:
        if resume_from is not None:
            resumed_at = int(json.loads((resume_from / "trainer_state.json").read_text())["step"])
        trainer.run()
    # Tune ended the trial in tune.report (a scheduler's stop, or its last result): sound actors
    except SystemExit:
        _kept.keep(trainer.actors, cfg)
        raise
    except BaseException:  # a lost or failed actor: the next trial here starts afresh
        _kept.release()
        raise
    else:
        # the same ones when reused; else the ones this trial started
        _kept.keep(trainer.actors, cfg)
    finally:
        if resume_from is not None:
            shutil.rmtree(resume_from, ignore_errors=True)


def _trial_resources(cfg: ExperimentConfig, local: bool) -> Any:
    """One placement group per trial: the trial's own bundle, then one per task actor (or per
    worker, with ``resources.workers`` a number below theirs; ``auto`` is one per task actor here).

    GPUs (``resources.gpus: auto``): one per actor when the cluster has any now, or its autoscaler
    has a node type with GPUs (the trial waits for it to add them,
    :func:`raymeta.cluster.cluster_view`); ``resources.gpus`` as a number, or
    ``num_gpus_per_actor``, fixes it. ``local``: our own fixed instance, where a trial that can
    never fit is an error now instead of a trial PENDING forever."""
    import ray
    from ray import tune

    from ..cluster import cluster_view

    r = cfg.resources
    if r.num_gpus_per_actor is not None:
        actor_gpus = r.num_gpus_per_actor
    elif r.gpus != "auto":
        actor_gpus = float(r.gpus)
    else:
        view = cluster_view()
        actor_gpus = 1.0 if view.total("GPU") >= 1 or view.can_add({"GPU": 1,
                                                                    **r.custom_resources}) else 0.0
    actor_cpus = r.num_cpus_per_actor if r.num_cpus_per_actor is not None else (1.0 if actor_gpus
                                                                                else 0.5)
    bundle: dict[str, float] = {"CPU": actor_cpus, **({"GPU": actor_gpus} if actor_gpus else {}),
                                **r.custom_resources}
    tasks = []
    for t in cfg.tasks:
        if t.weight > 0 or cfg.tune.space.weights:  # the search may give a zero-weight task a share
            tasks += [{**bundle, **t.resources}] * t.replicas
    if isinstance(r.workers, int) and r.workers < len(tasks):  # resources.workers: W bundles
        merged = {k: max(b.get(k, 0) for b in tasks) for b in tasks for k in b}
        tasks = [merged] * r.workers
    bundles = [{"CPU": cfg.tune.driver_cpus}, *tasks]
    # meta.weighting's target actors come after the task actors
    bundles += [bundle] * target_count(cfg)
    total = ray.cluster_resources()
    for key in {k for b in bundles for k in b}:
        need = sum(b.get(key, 0) for b in bundles)
        if local and need > total.get(key, 0):
            raise RaymetaError(f"tune: one trial needs {key}={need:g} (driver + {len(bundles) - 1} "
                               "task actors) but the "
                               f"local instance has {total.get(key, 0):g}; lower tune.driver_cpus "
                               "or resources.*")
    return tune.PlacementGroupFactory(bundles, strategy="PACK")


def tune_holdout(cfg: ExperimentConfig) -> tuple[ExperimentConfig, dict[str, Any] | None]:
    """``cfg`` as every trial trains with it, and the classes held back (None: ``cfg`` itself,
    unchanged).

    Without ``tune.validation_tasks``, ``eval.validation.holdout_classes`` resolves here, once
    (:func:`raymeta.tasks.holdout.resolve_holdout`; its one-line errors, before Ray starts), and its
    held-out tasks become the trials' validation tasks. A searched ``tune.space.ways`` is checked
    against the kept classes: the widest episode must fit every meta-training task it applies to."""
    v = cfg.eval.validation
    if cfg.tune.validation_tasks or v is None or v.holdout_classes is None:
        return cfg, None
    widest = max(cfg.tune.space.ways or [0])
    probe = cfg
    # resolve_holdout checks the kept classes against meta.episode.ways
    if widest > (cfg.meta.episode.ways or 2):
        probe = cfg.model_copy(deep=True)
        probe.meta.episode.ways = widest
    try:
        run = resolve(probe)
        resolved, record = run.cfg, run.holdout
    except ConfigError as e:
        raise ConfigError(str(e).replace("(meta.episode.ways)",
                                         "(the widest of tune.space.ways)") if probe is not cfg
                          else str(e)) from None
    resolved.meta.episode.ways = cfg.meta.episode.ways
    resolved.tune.validation_tasks = [dict(t) for t in resolved.eval.validation.tasks]
    resolved.tune.validation_split = "all"  # every row of a held class: no trial reads any
    return resolved, record


def _check_ways(cfg: ExperimentConfig) -> None:
    """The widest searched episode against each meta-training classification task's classes (one
    line)."""
    widest = max(cfg.tune.space.ways or [0])
    for spec in cfg.tasks:
        if (widest and spec.episode is None and spec.type == "sequence_classification"
                and spec.source.kind != "smlmt"):
            n = len(task_labels(spec, cfg.data_dir, cfg.cache_dir))
            if n < widest:
                raise ConfigError(f"config key 'tune.space.ways': {widest}-way episodes, but task "
                                  f"'{spec.name}' has {n} classes")


def check_tune_config(cfg: ExperimentConfig) -> None:
    """The tune section against the rest of the config (which tasks score, which train): one line,
    before any trial."""
    t = cfg.tune
    if not t.validation_tasks:
        raise ConfigError("config key 'tune.validation_tasks': give the meta-validation tasks that "
                          "score each trial "
                          "(or eval.validation.holdout_classes: the classes it holds back score "
                          "them)")
    train = {x.name: x for x in cfg.tasks}
    val_specs = task_specs(cfg, t.validation_tasks)
    val = {s.name for s in val_specs}
    test = {s.name for s in task_specs(cfg, t.test_tasks)}
    for spec in val_specs:  # a meta-training task validates only on the rows it holds back
        if spec.name in train and not (t.validation_split == "test"
                                       and held_back(spec, train[spec.name])):
            raise ConfigError(f"config key 'tune.validation_tasks': task '{spec.name}' is also a "
                              "meta-training task "
                              "(validate on its held-back rows with tune.validation_split=test)")
    if test & set(train):
        raise ConfigError(f"config key 'tune.test_tasks': task '{sorted(test & set(train))[0]}' is "
                          "also a meta-training task")
    if val & test:
        raise ConfigError(f"config key 'tune.test_tasks': task '{sorted(val & test)[0]}' is also a "
                          "meta-validation task")
    if t.eval_every > cfg.meta.steps:
        raise ConfigError(f"config key 'tune.eval_every': {t.eval_every} > meta.steps "
                          f"({cfg.meta.steps}): no trial would report")
    _check_ways(cfg)
    if t.scheduler == "pbt" and t.search == "optuna":
        log.info("tune.scheduler=pbt: trials are sampled at random (PBT does its own search by "
                 "perturbation)")


def _task_sizes(cfg: ExperimentConfig) -> dict[str, int]:
    """Training rows per meta-training task (tokenised features; the cache is shared with the
    actors)."""
    from ..core.model import load_tokenizer
    from ..tasks import load_task

    tok = load_tokenizer(cfg.model, fetch=storage.local_model_path)
    return {t.name: len(load_task(t, tok, cfg.data_dir,
                                  cfg.cache_dir).features["train"]) for t in cfg.tasks}


def _tuner(cfg: ExperimentConfig, trainable: Any, sizes: dict[str, int], num_samples: int) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    t = cfg.tune
    space, points = search_space(cfg, sizes)
    max_t = max(1, cfg.meta.steps // t.eval_every)
    scheduler: Any
    if t.scheduler == "pbt":
        # PBT perturbs the continuous parameters between reports; the categorical/integer ones stay.
        mutations = {k: v for k,
                     v in space.items() if k.startswith(WEIGHT_PREFIX) or k in ("lr", "inner_lr")}
        scheduler = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                            hyperparam_mutations=mutations, synch=False)
        search = BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.seed)
    else:
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                   grace_period=min(t.grace_period, max_t),
                                   reduction_factor=t.reduction_factor)
                     if t.scheduler == "asha" else FIFOScheduler())
        if t.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search = OptunaSearch(points_to_evaluate=points or None, seed=cfg.seed)
        else:
            search = BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.seed)
    if num_samples < len(points):
        log.warning("--num-samples %d < %d seeded heuristics: only the first %d run", num_samples,
                    len(points), num_samples)
    tune_config = tune.TuneConfig(metric=METRIC, mode="max", search_alg=search, scheduler=scheduler,
                                  num_samples=num_samples,
                                  max_concurrent_trials=t.max_concurrent_trials,
                                  reuse_actors=t.reuse_actors)
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                      run_config=_run_config(cfg))


def _run_config(cfg: ExperimentConfig) -> Any:
    from ray import tune

    storage, _, name = experiment_path(cfg).rpartition("/")
    return tune.RunConfig(
        name=name, storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
        # keep the best checkpoints (the latest is always kept too: retries restore from it); PBT
        # clones other trials' checkpoints, so it keeps more of them
        checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if cfg.tune.scheduler == "pbt" else 2,
                                                checkpoint_score_attribute=METRIC,
                                                checkpoint_score_order="max"),
        # TensorBoard files reach cloud storage too
        sync_config=tune.SyncConfig(sync_artifacts=True),
        verbose=1,
    )


def run_tune(cfg: ExperimentConfig, *, num_samples: int | None = None,
             resume: bool = False) -> dict[str, Any]:
    """Search, then write ``best_config.yaml``, ``best_model/`` and the plot into ``output_dir``."""
    import ray
    from ray import tune

    from ..cluster import connect
    from .report import finish

    cfg, holdout = tune_holdout(cfg)
    check_tune_config(cfg)
    # Tune runs each trial in its own directory unless told not to (Ray propagates this variable to
    # trials). A relative path in the config (data_dir, task files) means the directory `raymeta
    # tune` started in, as it does for `raymeta train`; trials write only under absolute paths
    # (their trial directory).
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # a storage URI: written into a local staging directory, then sent
    outputs = RunOutputs(cfg.output_dir)
    started = connect(cfg.resources.address)
    try:
        sizes = _task_sizes(cfg)
        pbt = cfg.tune.scheduler == "pbt"
        trainable = tune.with_resources(tune.with_parameters(_trial,
                                                             base_json=cfg.model_dump_json(),
                                                             pbt=pbt),
                                        _trial_resources(cfg, local=started))
        path = experiment_path(cfg)
        # the trial count, to tell a finished search from a stopped one
        plan = outputs.local / "tune_plan.json"
        if outputs.uri is not None and storage.exists(storage.join(outputs.uri, plan.name)):
            storage.download(storage.join(outputs.uri, plan.name), plan)
        if resume:
            if not tune.Tuner.can_restore(path):
                raise RaymetaError(f"--resume: no Tune experiment to resume at {path}")
            log.info("resuming the Tune experiment at %s", path)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
            expected = json.loads(plan.read_text())["num_samples"] if plan.is_file() else 0
        else:
            if tune.Tuner.can_restore(path):
                raise RaymetaError(f"{path} already holds a Tune experiment: add --resume to "
                                   "continue it, or change name / output_dir")
            expected = num_samples or cfg.tune.num_samples
            tuner = _tuner(cfg, trainable, sizes, expected)
            write_json_atomic(plan, {"num_samples": expected, "experiment": path})
            if holdout is not None:  # which classes ranked the trials, which none trained on
                write_json_atomic(outputs.local / HOLDOUT_JSON, holdout)
            outputs.mirror()
        grid = tuner.fit()
        # Ctrl-C makes Tune save the experiment and return early; that is an interruption, not a
        # result.
        if grid.num_terminated + grid.num_errors < max(len(grid), expected):
            raise KeyboardInterrupt("search interrupted; continue it with: raymeta tune --config "
                                    f"... --resume ({path})")
        summary = finish(cfg, grid, sizes, out=outputs.local)
        outputs.mirror()
        summary["files"] = {k: v and outputs.shown(v) for k, v in summary["files"].items()}
        return summary
    finally:
        outputs.close()
        if started:
            ray.shutdown()
