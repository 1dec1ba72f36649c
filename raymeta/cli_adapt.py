"""``raymeta adapt``: its arguments and what it prints. Beside :mod:`raymeta.cli`, which wires it
in; the work is :mod:`raymeta.adapt`'s."""

from __future__ import annotations

import argparse

__all__ = ["add_adapt"]


def _cmd_adapt(args: argparse.Namespace) -> int:
    from .adapt import adapt

    general = None if args.general is None else [t for t in args.general if t != "none"]
    result = adapt(args.unlabelled, output=args.output, labelled=args.labelled,
                   text_column=args.text_column, label_column=args.label_column, init=args.init,
                   recipe=args.recipe, general=general, steps=args.steps,
                   align=not args.no_align, overrides=args.overrides, overwrite=args.overwrite,
                   address=args.address)
    print(result.summary())
    print("next:\n"
          f"    raymeta fit --train YOUR_LABELLED.csv --init {result.model} --output classifier\n"
          f"    raymeta evaluate --init {args.init or 'offline:all-MiniLM-L6-v2'} "
          f"--init {result.model} --task YOUR_TASK --method setfit")
    return 0


def add_adapt(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "adapt", help="meta-pretrain on your own unlabelled text (SMLMT over it, mixed with "
        "general tasks); best chosen on your labelled rows",
        description="Adapt an encoder to a domain: SMLMT tasks over the unlabelled text join the "
        "recipe's general tasks in a short meta-training run on Ray. With --labelled, the rows "
        "steer the learned task weights and choose the best step (the starting model is always a "
        "candidate). Writes a run directory as `raymeta train` does; its best/ is the model.")
    a.add_argument("--unlabelled", required=True,
                   help="your domain's text: a txt (one text per line), csv, tsv, jsonl, json or "
                   "parquet file, a directory of them, or a storage URI")
    a.add_argument("--labelled",
                   help="a few labelled rows of your task (csv, jsonl, parquet...; at least 2 "
                   "classes, 2 rows each): the alignment target and the validation that picks best")
    a.add_argument("--text-column", default="text", help="the text column of both files "
                   "(default: text)")
    a.add_argument("--label-column", default="label", help="the label column of --labelled "
                   "(default: label)")
    a.add_argument("--init", help="the encoder to start from: a model directory, a raymeta run's "
                   "best/ or final/, or a hub name (default: the recipe's, offline MiniLM-L6)")
    a.add_argument("--recipe", default="recipes/adapt",
                   help="the config adapt starts from (default: recipes/adapt)")
    a.add_argument("--general", nargs="+", metavar="TASK",
                   help="ready-made tasks to mix with the domain task instead of the recipe's "
                   "(`raymeta tasks list`); `none` for the domain task alone")
    a.add_argument("--steps", type=int, help="meta-steps (default: the recipe's, 40)")
    a.add_argument("--no-align", action="store_true",
                   help="with --labelled: keep the recipe's mixture fixed (the rows only choose "
                   "best)")
    a.add_argument("--output", required=True, help="the run directory to write (local)")
    a.add_argument("--overwrite", action="store_true",
                   help="--output holds a run: remove its outputs and start over")
    a.add_argument("--address",
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local instance)")
    a.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides on the adapt config, e.g. meta.steps=20")
    a.set_defaults(func=_cmd_adapt)
