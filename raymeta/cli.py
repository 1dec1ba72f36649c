"""The ``raymeta`` command. Subcommands parse arguments and call one library function.

User errors (:class:`~raymeta.errors.RaymetaError`) print one line and exit 2 — no
traceback; Ctrl-C exits 130 and SIGTERM 143, also in one line. Nothing here is imported by
the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .arglists import rename_deprecated, shot_counts
from .errors import RaymetaError

if TYPE_CHECKING:  # the commands import what they need when they run: `raymeta --help` stays fast
    from .config import ExperimentConfig, TaskConfig

__all__ = ["main"]

log = logging.getLogger("raymeta")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # datasets/transformers are chatty at INFO; keep their warnings only.
    for name in ("datasets", "transformers", "filelock", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.getLogger("raymeta").setLevel(level if verbose else logging.INFO)


def _cmd_tasks_list(args: argparse.Namespace) -> int:
    from .show import show_catalog

    show_catalog()
    return 0


def _cmd_tasks_show(args: argparse.Namespace) -> int:
    from .config import ModelConfig, load_config
    from .show import show_tasks
    from .tasks.registry import task_config, task_from_entry

    overrides = [n for n in args.names if "=" in n]
    args.names = [n for n in args.names if "=" not in n]
    if args.config:
        cfg = load_config(args.config, overrides)
        specs = list(cfg.tasks) + [task_from_entry(e, data_dir=cfg.data_dir)
                                   for e in cfg.eval.tasks]
        data_dir, cache_dir, model, seed, episode = (cfg.data_dir, cfg.cache_dir, cfg.model,
                                                     cfg.seed, cfg.meta.episode)
    else:
        if not args.names:
            raise RaymetaError("tasks show: give task names / task YAML files, or --config FILE")
        from .config import ExperimentConfig

        base = ExperimentConfig()
        specs = [task_config(n) for n in args.names]
        data_dir, cache_dir, model, seed, episode = (base.data_dir, base.cache_dir, base.model, 0,
                                                     base.meta.episode)
        if args.model:
            model = ModelConfig(name_or_path=args.model)
    data_dir = args.data_dir or data_dir
    seed = args.seed if args.seed is not None else seed
    show_tasks(specs, model=model, data_dir=data_dir, cache_dir=cache_dir, seed=seed,
               episode=episode)
    return 0


def _run_config(args: argparse.Namespace) -> ExperimentConfig:
    """``--config`` with its ``key=value`` overrides, and ``--address`` as ``resources.address``."""
    from .config import load_config

    return load_config(args.config,
                       list(args.overrides) + ([f"resources.address={args.address}"]
                                               if args.address else []))


def _run_tasks(cfg: ExperimentConfig) -> list[TaskConfig]:
    from .train.validation_tasks import run_specs

    return run_specs(cfg)


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    from . import storage
    from .config.resolve import wants_best

    # the config, and its one-line errors, before torch, datasets or Ray are imported
    cfg = _run_config(args)
    from .tasks import check_tasks
    from .train.outputs import prepare_output_dir

    prepare_output_dir(cfg.output_dir, resume=args.resume, overwrite=args.overwrite,
                       dry_run=args.dry_run)
    check_tasks(_run_tasks(cfg), cfg.data_dir, cfg.cache_dir)
    if args.dry_run:
        return _train_dry_run(cfg)
    from .train.interrupted import interrupted_message
    from .train.trainer import MetaTrainer
    from .train.validation import BEST_JSON

    trainer = MetaTrainer(cfg, resume=args.resume)
    try:
        final = trainer.run()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (cluster.connect.Terminated): one line
        command = ["raymeta", "train", "--config", args.config, *args.overrides,
                   *(["--address", args.address] if args.address else [])]
        raise type(e)(interrupted_message(trainer, command)) from None
    best = storage.join(cfg.output_dir, "best")  # a URI, or beside the local final/
    chosen_file = storage.join(best, BEST_JSON)
    if wants_best(cfg) and storage.exists(chosen_file):
        chosen = json.loads(storage.read_text(chosen_file))
        print(f"\nbest on meta-validation (step {chosen['step']} of {cfg.meta.steps}, score "
              f"{chosen['score']:.4f}): {best}\nlast step: {final}")
        final = best
    else:
        print(f"\nmeta-pretrained encoder: {final}")
    print(f"load it with:\n"
          f"    from transformers import AutoModel, AutoTokenizer\n"
          f"    model = AutoModel.from_pretrained('{final}'); tokenizer = "
          f"AutoTokenizer.from_pretrained('{final}')")
    print(_next_commands(cfg, str(final)))
    return 0


def _next_commands(cfg: ExperimentConfig, init: str) -> str:
    """What to run next: the paired comparison with the model the run started from, on the
    config's test tasks (or the user's own), and the dashboard."""
    from . import storage

    tasks = [str(e.get("use") or e.get("name")) for e in cfg.eval.tasks] or ["YOUR_TASK.yaml"]
    out = storage.join(cfg.output_dir, "compare.json")
    return ("next:\n"
            f"    raymeta evaluate --init {cfg.model.name_or_path} --init {init} "
            + " ".join(f"--task {t}" for t in tasks) + f" --output {out}\n"
            f"    tensorboard --logdir {storage.join(cfg.output_dir, 'tensorboard')}")


def _train_dry_run(cfg: ExperimentConfig) -> int:
    """``raymeta train --dry-run``, after train's own checks (the config, output_dir, every task's
    rows): the trainer is built, which makes every check it makes before Ray starts and starts
    nothing; then the config the run would save as its config.yaml, on stdout."""
    from .config import config_yaml
    from .train.trainer import MetaTrainer

    trainer = MetaTrainer(cfg)
    trainer.outputs.close()  # a storage URI's staging directory: nothing was written into it
    print(config_yaml(trainer.cfg), end="", flush=True)
    print("raymeta train --dry-run: the config, output_dir and the tasks' data checked; Ray not "
          "started, nothing trained", file=sys.stderr)
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from .config import config_yaml, load_config

    # without --config: the schema's defaults, and the overrides
    print(config_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .config import EMBEDDING_CLASSIFIERS, EVAL_METHODS, ExperimentConfig, LabelPriorConfig
    from .eval.compare import evaluation_table, write_evaluation_report
    from .eval.evaluate import evaluate_episodic_inits, evaluate_inits, resolve_eval_task
    from .eval.fastfit import FastfitSettings
    from .eval.finetune import FinetuneSettings
    from .eval.setfit import SetfitSettings

    base = ExperimentConfig()
    data_dir = args.data_dir or base.data_dir
    setfit_flags = {"--setfit-iterations": args.setfit_iterations,
                    "--setfit-epochs": args.setfit_epochs,
                    "--setfit-batch-size": args.setfit_batch_size, "--setfit-lr": args.setfit_lr}
    given = [flag for flag, v in setfit_flags.items() if v is not None]
    methods = [m for m in (args.method or "").split(",") if m] or (["prototype"] if args.episodic
                                                                   else ["finetune"])
    if any(m not in EVAL_METHODS for m in methods):
        raise RaymetaError(f"--method {args.method}: expected one or more of "
                           f"{', '.join(EVAL_METHODS)}, comma-separated")
    if args.episodic and args.address:
        raise RaymetaError("--address: --episodic scores its episodes in this process, without Ray")
    if args.episodic and (other := [m for m in methods if m not in EMBEDDING_CLASSIFIERS]):
        raise RaymetaError(f"--method {other[0]} scores K-shot splits; --episodic scores N-way "
                           "K-shot episodes with "
                           f"{', '.join(EMBEDDING_CLASSIFIERS)} (and the fine-tuned head): use one "
                           "of them")
    if given and "setfit" not in methods:
        raise RaymetaError(f"{given[0]} applies to --method setfit only")
    for flag in given:
        if not setfit_flags[flag] > 0:
            raise RaymetaError(f"{flag} must be positive, got {setfit_flags[flag]}")
    heads = {"--ridge-lambda": ("ridge", args.ridge_lambda),
             "--svm-lambda": ("svm", args.svm_lambda),
             "--svm-iterations": ("svm", args.svm_iterations),
             "--fastfit-epochs": ("fastfit", args.fastfit_epochs)}
    for flag, (m, v) in heads.items():
        if v is not None and m not in methods:
            raise RaymetaError(f"{flag} applies to --method {m} only")
        if v is not None and not v > 0:
            raise RaymetaError(f"{flag} must be positive, got {v}")
    # the config schema's eval.ridge / eval.svm, where a flag is not given
    ridge = base.eval.ridge.model_copy(update={"lam": args.ridge_lambda} if args.ridge_lambda
                                       else {})
    svm_flags = {"lam": args.svm_lambda, "iterations": args.svm_iterations}
    svm = base.eval.svm.model_copy(update={k: v for k, v in svm_flags.items() if v})
    # SetFit's label-name track: templated examples of each class's name among its training rows
    setfit_template = args.label_template if "setfit" in methods else None
    if args.label_template is not None and args.label_prior is None and not setfit_template:
        raise RaymetaError("--label-template goes with --label-prior WEIGHT or --method setfit")
    prior = {"label_prior": args.label_prior or 0.0,
             "label_template": args.label_template or "{name}"}
    if args.label_template is not None:
        from pydantic import ValidationError

        try:
            # the schema's check: {name} and no other field
            LabelPriorConfig(template=args.label_template)
        except ValidationError as e:
            raise RaymetaError(f"--label-template '{args.label_template}': "
                               f"{e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    # evaluate*() check the rest (check_label_prior)
    shots = shot_counts(args.shots, zero_ok=bool(args.label_prior))
    if Path(args.output).exists() and not args.overwrite:  # before anything is loaded or scored
        raise RaymetaError(f"--output {args.output}: the file exists (--overwrite replaces it)")
    tasks = [resolve_eval_task(t) for t in args.task]
    # several --init: every one on the same splits (episodes), each later one paired with the first
    if args.episodic:
        out = evaluate_episodic_inits(args.init, tasks, ways=args.ways, shots=shots,
                                      queries=args.queries, episodes=args.episodes,
                                      head_steps=args.head_steps, seed=args.seed, data_dir=data_dir,
                                      cache_dir=base.cache_dir, output=args.output, methods=methods,
                                      ridge=ridge, svm=svm, **prior)
    else:
        settings = FinetuneSettings(steps=args.steps, lr=args.lr, head_lr=args.head_lr,
                                    batch_size=args.batch_size,
                                    max_test=args.max_test or None)
        flags = {"iterations": args.setfit_iterations, "epochs": args.setfit_epochs,
                 "batch_size": args.setfit_batch_size, "body_lr": args.setfit_lr}
        # the config schema's eval.setfit defaults, where a flag is not given
        setfit = SetfitSettings(**{**base.eval.setfit.model_dump(),
                                   **{k: v for k, v in flags.items() if v is not None}})
        # the config schema's eval.fastfit (FastFit's README), and --fastfit-epochs
        epochs = {"epochs": args.fastfit_epochs} if args.fastfit_epochs else {}
        fastfit = FastfitSettings(**{**base.eval.fastfit.model_dump(), **epochs})
        out = evaluate_inits(args.init, tasks, shots=shots, n_splits=args.splits, settings=settings,
                             seed=args.seed, data_dir=data_dir, cache_dir=base.cache_dir,
                             output=args.output, method=methods, setfit=setfit, fastfit=fastfit,
                             address=args.address, ridge=ridge, svm=svm,
                             setfit_template=setfit_template, **prior)
    # the progress bar (stderr) is done: the table goes to stdout on lines of its own
    sys.stderr.flush()
    print(evaluation_table(out), flush=True)
    md, plot = write_evaluation_report(out, args.output)  # the table as .md, score against K .png
    print(f"\nwrote {args.output}, {md}" + (f" and {plot}" if plot else ""))
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import quick_config, run_benchmark, run_configs
    from .tasks import check_tasks
    from .tasks.registry import task_from_entry

    cfg = _run_config(args)
    if args.quick:
        cfg = quick_config(cfg)
    out = Path(args.output or Path(cfg.output_dir) / ("benchmark-quick" if args.quick
                                                      else "benchmark"))
    # every task's rows checked before Ray starts: each run's meta-training (and validation) tasks,
    # the eval tasks
    checked = [t for run in run_configs(cfg, out).values() for t in _run_tasks(run)]
    checked += [task_from_entry(e, data_dir=cfg.data_dir) for e in [*cfg.eval.tasks,
                                                                    *cfg.eval.episodic_tasks]]
    check_tasks(checked, cfg.data_dir, cfg.cache_dir)
    run_benchmark(cfg, out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .tune.report import summary_table
    from .tune.search import run_tune

    cfg = _run_config(args)
    summary = run_tune(cfg, num_samples=args.num_samples, resume=args.resume)
    print(f"\n{summary['metric']}:\n{summary_table(summary)}\n")
    for what, path in summary["files"].items():
        print(f"{what}: {path}")
    print(f"train the best mixture: raymeta train --config {summary['files']['best_config']}")
    return 0


def _cmd_speed(args: argparse.Namespace) -> int:
    if args.fit_from and not args.project:
        raise RaymetaError("--fit-from FILE goes with --project (a run fits its own rows: "
                           "result['cost_model'])")
    if args.project:  # the cost model only: no Ray, no case runs
        from .speed.costmodel import load_fit
        from .speed.report import projection_report

        fitted = load_fit(args.fit_from) if args.fit_from else None
        print(projection_report(fitted, source=f"fitted from {args.fit_from}" if fitted else None))
        return 0
    from .speed.bench import run_from_args

    return run_from_args(args)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default, except where there is none to show (None, an off
    switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """The ``raymeta`` parser and, being its type, every subcommand's: each ``--help`` shows the
    defaults."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import EvalConfig, SetfitConfig

    # `raymeta evaluate`'s defaults are the config schema's eval section (one source: they cannot
    # drift apart)
    ev_defaults, sf_defaults = EvalConfig(), SetfitConfig()
    p = _Parser(prog="raymeta", description="Meta-learning pretraining of NLP transformers on Ray.")
    p.add_argument("--version", action="version", version=f"raymeta {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True)

    tasks = sub.add_parser("tasks", help="inspect tasks").add_subparsers(dest="tasks_command",
                                                                         required=True)
    ls = tasks.add_parser("list", help="list the ready-made tasks")
    ls.set_defaults(func=_cmd_tasks_list)
    show = tasks.add_parser("show",
                            help="type, source, labels, split sizes, token lengths and one decoded "
                            "episode")
    show.add_argument("names", nargs="*", metavar="NAME_OR_FILE",
                      help="ready-made task name or task YAML file (with --config: key=value "
                      "overrides)")
    show.add_argument("--config", help="show every task of this experiment config")
    show.add_argument("--data-dir",
                      help="where ../shared/data-style files live (default: $RAYMETA_DATA_DIR or "
                      "../shared/data)")
    show.add_argument("--model", help="tokenizer to use (default: the offline MiniLM)")
    show.add_argument("--seed", type=int, default=None, help="seed of the episode shown")
    show.set_defaults(func=_cmd_tasks_show)

    tr = sub.add_parser("train", help="meta-train the shared encoder: one Ray actor per task")
    tr.add_argument("--config", required=True,
                    help="experiment YAML, or a shipped config's name: starter, tiny, "
                    "recipes/huffpost... (raymeta/configs/)")
    tr.add_argument("--resume", action="store_true",
                    help="continue from the latest checkpoint in output_dir")
    tr.add_argument("--overwrite", action="store_true",
                    help="output_dir holds a run: remove its outputs and start over (without it, "
                    "such a run is refused)")
    tr.add_argument("--address",
                    help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    tr.add_argument("--dry-run", action="store_true",
                    help="check the config, output_dir and the tasks' data, print the resolved "
                    "config and exit: no Ray, no training")
    tr.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. meta.steps=20")
    tr.set_defaults(func=_cmd_train)

    cf = sub.add_parser("config", help="inspect experiment configs").add_subparsers(
        dest="config_command", required=True)
    cs = cf.add_parser("show",
                       help="print the resolved config as YAML: every default filled in, secrets "
                       "redacted (what a run saves as config.yaml)")
    cs.add_argument("--config",
                    help="experiment YAML, or a shipped config's name (default: the schema's "
                    "defaults)")
    cs.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. meta.steps=20")
    cs.set_defaults(func=_cmd_config_show)

    ev = sub.add_parser("evaluate",
                        help="few-shot evaluation (fine-tuning, prototypes, SetFit, or episodes) "
                        "of an init on held-out tasks")
    ev.add_argument("--init", action="append", required=True,
                    help="raymeta run/checkpoint dir, Hugging Face model dir, storage URI, "
                    "offline:all-MiniLM-L6-v2, or hub name; repeatable: every init on the same "
                    "splits, each later one paired with the first (gain and its 95%% CI)")
    ev.add_argument("--task", action="append", required=True,
                    help="ready-made task, task YAML, or a directory with train.jsonl/test.jsonl "
                    "(text, label); repeatable")
    ev.add_argument("--shots", default=",".join(map(str, ev_defaults.shots)),
                    help="K values (episodic: shots per class), e.g. 4,8,16")
    ev.add_argument("--splits", type=int, default=ev_defaults.splits,
                    help="seeded K-shot splits per K")
    ev.add_argument("--output", default="results.json",
                    help="results file (its table as .md and its plot as .png beside it); an "
                    "existing one is refused without --overwrite")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace an existing --output file")
    ev.add_argument("--method", default=None, metavar="METHOD[,METHOD...]",
                    help="finetune (default): encoder + head fine-tuned on each split; prototype: "
                    "nearest class mean, no training (Snell et al. 2017); ridge, svm: MetaOptNet's "
                    "ridge-regression and multi-class SVM heads on the frozen embeddings (Lee et "
                    "al. 2019); setfit: SetFit (Tunstall et al. 2022; pip install "
                    "'raymeta[setfit]'); fastfit: FastFit, trained against the label names "
                    "(Yehudai and Bandel 2024; pip install 'raymeta[fastfit]'). Several, "
                    "comma-separated, score the same splits. --episodic: prototype (default), "
                    "ridge, svm")
    ev.add_argument("--ridge-lambda", type=float,
                    help=f"ridge: the regulariser λ (default {ev_defaults.ridge.lam:g})")
    ev.add_argument("--svm-lambda", type=float,
                    help=f"svm: the regulariser λ = 1/C (default {ev_defaults.svm.lam:g})")
    ev.add_argument("--svm-iterations", type=int,
                    help=f"svm: dual solver steps (default {ev_defaults.svm.iterations})")
    ev.add_argument("--label-prior", type=float, metavar="WEIGHT",
                    help="prototype: each class's name (the task's label_names, else the label "
                    "with underscores as spaces, lower case) is one more support point of this "
                    "weight; reported as prototype+names, the label-name track. With it, --shots "
                    "0 is a zero-shot classifier from the names alone")
    ev.add_argument("--label-template", metavar="TEXT",
                    help="with --label-prior: the text embedded for a name, e.g. "
                    "'This is about {name}.' (default: '{name}'); with --method setfit: SetFit's "
                    "label-name track, 8 such examples per class among its training rows "
                    "(setfit+names)")
    ev.add_argument("--steps", type=int, default=ev_defaults.finetune_steps,
                    help="fine-tuning steps per split")
    ev.add_argument("--lr", type=float, default=ev_defaults.finetune_lr,
                    help="encoder learning rate")
    ev.add_argument("--head-lr", type=float, default=ev_defaults.head_lr,
                    help="the new head's learning rate")
    ev.add_argument("--batch-size", type=int, default=ev_defaults.batch_size,
                    help="fine-tuning batch size")
    ev.add_argument("--max-test", type=int, default=ev_defaults.max_test_examples or 0,
                    help="test examples scored (seeded subsample); 0 = all")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the K-shot splits, episodes and fine-tuning")
    ev.add_argument("--data-dir",
                    help="where ../shared/data-style files live (default: $RAYMETA_DATA_DIR or "
                    "../shared/data)")
    ev.add_argument("--address",
                    help="Ray cluster address for the K-shot runs (default: $RAY_ADDRESS, else a "
                    "local instance)")
    ev.add_argument("--episodic", action="store_true",
                    help="N-way K-shot episodes on the test classes instead")
    ev.add_argument("--ways", type=int, default=ev_defaults.ways,
                    help="episodic: classes per episode (N)")
    ev.add_argument("--queries", type=int, default=ev_defaults.queries,
                    help="episodic: query examples per class")
    ev.add_argument("--episodes", type=int, default=ev_defaults.episodes,
                    help="episodic: seeded episodes per task and K")
    ev.add_argument("--head-steps", type=int, default=ev_defaults.head_steps,
                    help="episodic: steps of the fine-tuned linear head")
    ev.add_argument("--setfit-iterations", type=int,
                    help="setfit: contrastive pairs = 2 x this x training rows "
                    f"(default {sf_defaults.iterations})")
    ev.add_argument("--setfit-epochs", type=int,
                    help=f"setfit: epochs over the pairs (default {sf_defaults.epochs})")
    ev.add_argument("--setfit-batch-size", type=int,
                    help=f"setfit: pairs per step (default {sf_defaults.batch_size})")
    ev.add_argument("--setfit-lr", type=float,
                    help=f"setfit: the body's learning rate (default {sf_defaults.body_lr:g})")
    ev.add_argument("--fastfit-epochs", type=int,
                    help=f"fastfit: epochs (default {ev_defaults.fastfit.epochs}, its README's)")
    ev.set_defaults(func=_cmd_evaluate)

    bm = sub.add_parser("benchmark",
                        help="few-shot accuracy: meta-train every algorithm at equal budget and "
                        "compare the inits")
    bm.add_argument("--config", required=True,
                    help="experiment YAML with a benchmark: section, or a shipped one's name "
                    "(benchmark)")
    bm.add_argument("--quick", action="store_true",
                    help="the small budget of benchmark.quick (minutes on 2 CPUs)")
    bm.add_argument("--output",
                    help="directory for results.json, results.md and plots (default: "
                    "<output_dir>/benchmark)")
    bm.add_argument("--address",
                    help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    bm.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides (dotted keys), applied after the YAML")
    bm.set_defaults(func=_cmd_benchmark)

    sp = sub.add_parser("speed",
                        help="meta-step speed: time breakdown and ratios against one-process and "
                        "DDP baselines (formerly `raymeta bench`)")
    sp.add_argument("--quick", action="store_true",
                    help="CI size: tiny model, N=1,2,4, DDP at N=2 (minutes on 2 CPUs)")
    sp.add_argument("--models", help="comma-separated: minilm, tiny (default: both)")
    sp.add_argument("--tasks", help="numbers of tasks, e.g. 1,2,4,8,16")
    sp.add_argument("--reduce",
                    help="reduce modes, comma-separated: driver, collective (meta.overlap on), "
                    "driver:no-overlap, collective:no-overlap (default: driver,collective)")
    sp.add_argument("--steps", type=int, help="timed steps per case, after the warm-up (default 5)")
    sp.add_argument("--warmup", type=int, help="untimed steps first (default 2; --quick: 1)")
    sp.add_argument("--ddp-tasks",
                    help="run (b), DDP, only at these N (default: every N; 'none': never)")
    sp.add_argument("--no-reference", action="store_true",
                    help="skip (a), the single-process reference")
    sp.add_argument("--trainable",
                    help="model.trainable modes side by side: full, lora, top_layers (default: "
                    "full; --quick: full,lora)")
    sp.add_argument("--algorithms",
                    help="meta-algorithms side by side, e.g. protonet,metaopt,metaopt:svm "
                    "(metaopt with its SVM head; default: multitask)")
    sp.add_argument("--weighting",
                    help="meta.weighting rules side by side: fixed, alignment (one target task; "
                    "default: fixed)")
    sp.add_argument("--transfer-dtype", choices=["float32", "bfloat16"],
                    help="meta.transfer_dtype of the trainer")
    sp.add_argument("--torch-threads", type=int,
                    help="torch threads per actor (default: its CPU share)")
    sp.add_argument("--output", help="write the results as JSON here")
    sp.add_argument("--project", action="store_true",
                    help="run nothing: print the cost model's projection of the "
                    "meta-step to GPU clusters (BERT-base; "
                    "benchmarks/results/overlap-cost-model.md) and what meta.reduce: auto picks")
    sp.add_argument("--fit-from", metavar="FILE",
                    help="with --project: constants fitted from this --output file "
                    "instead of the shipped ones")
    sp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides for every case")
    sp.set_defaults(func=_cmd_speed)

    from .cli_adapt import add_adapt
    from .cli_classify import add_fit, add_predict

    add_adapt(sub)
    add_fit(sub)
    add_predict(sub)
    tu = sub.add_parser("tune",
                        help="Ray Tune over task mixtures and learning rates, scored on "
                        "meta-validation tasks")
    tu.add_argument("--config", required=True,
                    help="experiment YAML with a tune: section, or a shipped one's name "
                    "(tune_starter)")
    tu.add_argument("--num-samples", type=int,
                    help="trials (default: tune.num_samples); the heuristics come first")
    tu.add_argument("--resume", action="store_true",
                    help="continue an interrupted search (Tuner.restore)")
    tu.add_argument("--address",
                    help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    tu.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides (dotted keys), applied after the YAML")
    tu.set_defaults(func=_cmd_tune)
    return p


# Old command names still accepted for one release, with a warning: `bench` (meta-step speed) was
# one letter-group away from `benchmark` (few-shot accuracy), so it became `speed`.
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(rename_deprecated(sys.argv[1:] if argv is None else argv))
    _setup_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings under Ray
    # a "Loading weights" bar per model load (trials, actors) is noise in a job log
    if not args.verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # raymeta.core.model.quiet_model_loading: the bars stay on, here and in the Ray workers this
    # starts
    else:
        os.environ["RAYMETA_VERBOSE"] = "1"
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RaymetaError as e:
        print(f"raymeta: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        # Ray's memory monitor, anywhere (a Ray task of evaluate or fit, a Ray Data job): one line
        from .cluster.oom import is_out_of_memory, out_of_memory_line

        if not is_out_of_memory(e):
            raise
        print(f"raymeta: error: {out_of_memory_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # its message says what was interrupted and how to go on
        from .cluster.connect import interrupt_exit_code

        print(f"raymeta: {str(e) or 'interrupted'}", file=sys.stderr)
        return interrupt_exit_code(e)  # 130 for Ctrl-C; 143 for SIGTERM once Ray runs


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
