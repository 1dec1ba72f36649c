"""``raymeta fit`` and ``raymeta predict``: their arguments and what they print. Beside
:mod:`raymeta.cli`, which wires them in; the work is :mod:`raymeta.classify`'s."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_fit", "add_predict"]


def _cmd_fit(args: argparse.Namespace) -> int:
    from .classify.fitting import fit
    from .classify.heads import FitSettings
    from .classify.labelled import parse_label_names
    from .eval.finetune import FinetuneSettings
    from .eval.setfit import SetfitSettings

    settings = FitSettings(setfit=SetfitSettings(iterations=args.setfit_iterations),
                           finetune=FinetuneSettings(steps=args.finetune_steps),
                           max_length=args.max_length)
    result = fit(args.train, output=args.output, inits=args.init or (), base=args.base,
                 method=args.method, text_column=args.text_column,
                 label_column=args.label_column,
                 label_names=parse_label_names(args.label_names), settings=settings,
                 folds=args.folds, seed=args.seed, address=args.address,
                 overwrite=args.overwrite, export=args.export or (),
                 progress=sys.stderr.isatty() or args.progress)
    if len(result.scores) > 1:
        print(f"{'candidate':<48} {'CV accuracy':>11} {'sd':>6}")
        for s in result.scores:
            mark = " <- chosen" if s.candidate == result.chosen else ""
            print(f"{str(s.candidate)[:48]:<48} {100 * s.mean:>10.1f}% {100 * s.std:>5.1f}{mark}")
    print(result.summary())
    print(f"classifier: {result.path} ({result.seconds:.0f} s); label files with\n"
          f"  raymeta predict --model {result.path} --input texts.csv --output labelled.csv")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .classify.predict import predict_file

    out = predict_file(args.model, args.input, args.output, text_column=args.text_column,
                       batch_size=args.batch_size, workers=args.workers, address=args.address,
                       overwrite=args.overwrite, progress=sys.stderr.isatty() or args.progress)
    print(f"labelled {out['rows']} rows into {out['output']} in {out['seconds']:.1f} s "
          f"({out['rows_per_second']:.0f} rows/s)")
    return 0


def add_fit(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "fit", help="fit a classifier to labelled rows (the init and head chosen by "
        "cross-validation)",
        description="Fit a text classifier to a few labelled rows and save it: the encoder (the "
        "plain one, or a raymeta init) and the head (SetFit, prototype, ridge, fine-tuning), "
        "chosen by stratified k-fold cross-validation on the rows with --method auto.")
    f.add_argument("--train", required=True,
                   help="labelled rows: a csv, tsv, jsonl, json or parquet file, or a directory "
                   "(its train.* file), local or a storage URI")
    f.add_argument("--output", required=True, help="the classifier directory to write")
    f.add_argument("--init", action="append", metavar="INIT",
                   help="a raymeta run or model directory to consider (repeat for several); the "
                   "plain encoder is always a candidate with --method auto")
    f.add_argument("--base", default=None,
                   help="the plain encoder (default: the model the first --init run started from, "
                   "else the offline MiniLM-L6)")
    f.add_argument("--method", default="auto",
                   choices=["auto", "setfit", "prototype", "ridge", "finetune"],
                   help="the head; auto: choose init and head by cross-validation")
    f.add_argument("--text-column", default="text", help="the column with the texts")
    f.add_argument("--label-column", default="label", help="the column with the labels")
    f.add_argument("--label-names", default=None, metavar="JSON",
                   help='names for the labels: a JSON object (or file), e.g. '
                   '\'{"0": "negative", "1": "positive"}\'')
    f.add_argument("--folds", type=int, default=5,
                   help="cross-validation folds (at most the smallest class's row count)")
    f.add_argument("--setfit-iterations", type=int, default=20,
                   help="SetFit's pair iterations (its default, 20)")
    f.add_argument("--finetune-steps", type=int, default=30, help="fine-tuning steps")
    f.add_argument("--max-length", type=int, default=128, help="tokens per text")
    f.add_argument("--seed", type=int, default=0, help="folds, SetFit pairs and training order")
    f.add_argument("--address", default=None, help="a Ray cluster to join (default: local)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    f.add_argument("--export", action="append", choices=["onnx"],
                   help="also write the classifier as model.onnx (pip install 'raymeta[onnx]')")
    f.add_argument("--progress", action="store_true",
                   help="a progress bar even when stderr is not a terminal")
    f.set_defaults(func=_cmd_fit)


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="label a file of texts with a classifier (a Ray Data job)",
        description="Label every row of a file with a classifier `raymeta fit` wrote: the "
        "input's columns, then predicted_label and prob:<label> per class.")
    p.add_argument("--model", required=True, help="a classifier directory (raymeta fit)")
    p.add_argument("--input", required=True,
                   help="texts: csv, tsv, jsonl, parquet or txt (one per line); a file, a "
                   "directory or a storage URI")
    p.add_argument("--output", required=True,
                   help="the labelled file: .csv, .tsv, .jsonl or .parquet (local or a URI)")
    p.add_argument("--text-column", default="text", help="the column with the texts")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument("--workers", type=int, default=None,
                   help="classifier replicas (default: one per GPU, else one per CPU)")
    p.add_argument("--address", default=None, help="a Ray cluster to join (default: local)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--progress", action="store_true",
                   help="a progress bar even when stderr is not a terminal")
    p.set_defaults(func=_cmd_predict)
