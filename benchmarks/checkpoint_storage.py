"""What a checkpoint costs on a local disk and on object storage, and what its manifest adds.

    python benchmarks/checkpoint_storage.py --repeat 5

For MiniLM-L6 (as ``model.trainable: full`` checkpoints it: the encoder, plus AdamW's two moments of
every parameter in ``trainer_state.safetensors``), medians over --repeat runs, side by side in one
process:

- ``save``: :func:`raymeta.core.checkpoint.save_checkpoint` to a local disk (the manifest's hashing
  included),
- ``manifest``: the SHA-256 of every file alone (the manifest's share of ``save``),
- ``verify``: :func:`raymeta.core.checkpoint.checkpoint_problem` (what ``--resume`` checks before
  trusting it),
- ``push``: :func:`raymeta.train.checkpoint_mirror.push_checkpoint` to an S3 bucket (manifest last,
  keep_last pruning),
- ``pull``: :func:`raymeta.train.checkpoint_mirror.pull_latest_checkpoint` back (download, then
  ``verify``).

The bucket is a real S3-protocol server on loopback (``moto[server]``, tests/s3server.py), so
``push`` and ``pull`` time the protocol and the copies, not a network: on a cloud bucket they are
bounded by its bandwidth instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from raymeta.config import ExperimentConfig, ModelConfig  # noqa: E402
from raymeta.core import checkpoint as ck  # noqa: E402
from raymeta.core.model import load_encoder, load_tokenizer  # noqa: E402
from raymeta.train import checkpoint_mirror as mirror  # noqa: E402
from tests import s3server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    cfg = ExperimentConfig()
    tok = load_tokenizer(ModelConfig())
    encoder = load_encoder(ModelConfig())
    params = [q for q in encoder.parameters()]
    tensors = {f"optim.{i}.{m}": torch.randn_like(q) for i,
               q in enumerate(params) for m in ("exp_avg", "exp_avg_sq")}
    times: dict[str, list[float]] = {k: [] for k in ("save", "manifest", "verify", "push", "pull")}
    s3server.export_env()
    with tempfile.TemporaryDirectory() as tmp, s3server.moto_server(s3server.PORT,
                                                                    Path(tmp) / "moto.log"):
        bucket = s3server.make_bucket("raymeta-bench")
        size = 0
        for r in range(args.repeat):
            t = time.perf_counter()
            path = ck.save_checkpoint(Path(tmp) / "run", r + 1, encoder=encoder, tokenizer=tok,
                                      cfg=cfg, tensors=tensors,
                                      state={"x": r}, keep_last=2)
            times["save"].append(time.perf_counter() - t)
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            t = time.perf_counter()
            for f in sorted(path.rglob("*")):
                if f.is_file() and f.name != ck.MANIFEST:
                    ck._sha256(f)
            times["manifest"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert ck.checkpoint_problem(path) is None
            times["verify"].append(time.perf_counter() - t)
            t = time.perf_counter()
            mirror.push_checkpoint(path, f"{bucket}/run/checkpoints", keep_last=2)
            times["push"].append(time.perf_counter() - t)
            t = time.perf_counter()
            got = mirror.pull_latest_checkpoint(f"{bucket}/run/checkpoints",
                                                Path(tmp) / f"pulled{r}")
            times["pull"].append(time.perf_counter() - t)
            assert got is not None and got.name == path.name
        n_files = sum(1 for f in path.rglob("*") if f.is_file())
    print(f"MiniLM-L6 checkpoint: {size / 1e6:.0f} MB in {n_files} files; medians of {args.repeat} "
          "(min-max), seconds\n")
    print("| phase | median s | min | max |\n|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f} |")


if __name__ == "__main__":
    main()
