"""The adaptation a knowledgeable user would try on the same unlabelled text, as a baseline for
``raymeta adapt`` (issue 39): TSDAE (Wang et al., Findings of EMNLP 2021), a denoising
auto-encoder over sentence embeddings, with sentence-transformers' own ``DenoisingAutoEncoderLoss``
and ``SentenceTransformerTrainer``. AdaSent (Huang et al., EMNLP 2023) used it as the domain
adaptation of a sentence encoder before SetFit.

    python benchmarks/tsdae.py --unlabelled /tmp/adapt_bench/ag_news/pool.txt \\
        --output /tmp/adapt_bench/run_tsdae
    raymeta evaluate --init offline:all-MiniLM-L6-v2 --init /tmp/adapt_bench/run_tsdae \\
        --task /tmp/adapt_bench/ag_news/task --shots 8 --splits 5 --method setfit

The paper's settings: 60% of the words deleted, a decoder tied to the encoder, batch 8, a constant
learning rate of 3e-5, one pass over the text. The init keeps its own pooling (mean for MiniLM), as
an adapted sentence encoder would. One difference, said here: words are split on white space, not
by NLTK's Treebank tokeniser, whose Punkt data is a download this project does not make
(sentence-transformers' ``DenoisingAutoEncoderDataset`` needs it; the loss does not). It reads the
same inputs as ``raymeta adapt --unlabelled`` (a file or a directory: txt, csv, tsv, jsonl, json,
parquet) and writes a Hugging Face model directory that ``raymeta evaluate --init`` takes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def delete_words(texts: list[str], ratio: float, seed: int) -> list[str]:
    """TSDAE's noise: each word deleted with probability ``ratio`` (at least one word kept),
    seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        words = text.split()
        keep = rng.random(len(words)) >= ratio
        if words and not keep.any():
            keep[rng.integers(len(words))] = True
        out.append(" ".join(w for w, k in zip(words, keep) if k))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unlabelled", required=True)
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--init", default="offline:all-MiniLM-L6-v2")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--deletion", type=float, default=0.6)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        SentenceTransformerTrainingArguments,
    )

    from raymeta.classify.labelled import read_texts
    from raymeta.core.model import resolve_model_path
    from raymeta.eval.setfit import _body
    from raymeta.storage import local_model_path

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    texts, _ = read_texts(args.unlabelled, text_column=args.text_column, what="--unlabelled")
    body = _body(resolve_model_path(args.init, local_model_path), None, args.max_length)
    loss = DenoisingAutoEncoderLoss(body, tie_encoder_decoder=True)
    data = Dataset.from_dict({"damaged": delete_words(texts, args.deletion, args.seed),
                              "original": texts})
    with tempfile.TemporaryDirectory() as tmp:
        targs = SentenceTransformerTrainingArguments(
            output_dir=tmp, num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            lr_scheduler_type="constant", weight_decay=0.0, seed=args.seed,
            save_strategy="no", report_to="none", logging_steps=50, use_cpu=True)
        trainer = SentenceTransformerTrainer(model=body, args=targs, train_dataset=data, loss=loss)
        result = trainer.train()
    args.output.mkdir(parents=True, exist_ok=True)
    # the encoder alone, as a plain Hugging Face directory (the decoder is training's scaffolding)
    body.transformers_model.save_pretrained(args.output)
    body.tokenizer.save_pretrained(args.output)
    info = {"objective": "tsdae", "init": args.init, "texts": len(texts),
            "steps": result.global_step, "train_loss": result.training_loss,
            "seconds": round(time.perf_counter() - t0, 1),
            **{k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "deletion",
                                              "max_length", "seed")}}
    (args.output / "tsdae.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
