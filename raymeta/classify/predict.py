"""``raymeta predict``: a classifier over a file of texts, as a Ray Data job.

The input (csv, tsv, jsonl, json lines, parquet or txt; local, a directory, or a storage URI) is
read by Ray Data in blocks, ``map_batches`` runs a pool of :class:`ClassifierBatch` actors (each
loads the classifier once; one GPU each where the cluster has GPUs), and the driver streams the
labelled batches, in input order, into one output file: the input's columns, then
``predicted_label`` and one ``prob:<label>`` column per class. Memory stays bounded by the blocks in
flight, not the file (benchmarks/results/fit-predict.md).

The output is written to a temporary sibling and renamed into place when every row is done, so a
failure leaves nothing behind.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import ConfigError, InputError
from .classifier import Classifier, is_classifier
from .labelled import FORMATS, input_files

__all__ = ["ClassifierBatch", "PREDICTED", "predict_file"]

PREDICTED = "predicted_label"
BLOCK_BYTES = 8 * 1024 * 1024  # Ray Data's target block size here: small blocks, bounded memory


class ClassifierBatch:
    """A Ray Data ``map_batches`` callable: the classifier loaded once per actor."""

    def __init__(self, model: str, text_column: str, batch_size: int, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.clf = Classifier.load(model)
        if torch.cuda.is_available():
            self.clf.encoder.to("cuda")
            self.clf.weight, self.clf.bias = self.clf.weight.cuda(), self.clf.bias.cuda()
        self.text_column, self.batch_size = text_column, batch_size

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        texts = [str(t) if t is not None else "" for t in batch.column(self.text_column)
                 .to_pylist()]
        logits = self.clf.logits(texts, self.batch_size) / self.clf.temperature
        probs = logits.softmax(-1).float().cpu().numpy()
        out = batch.append_column(PREDICTED, pa.array(
            [self.clf.labels[i] for i in probs.argmax(-1)], pa.string()))
        for j, label in enumerate(self.clf.labels):
            out = out.append_column(f"prob:{label}", pa.array(np.ascontiguousarray(probs[:, j])))
        return out


def _reader(files: list[str], fmt: str) -> Any:
    """Ray Data's reader of ``files``. Reading takes no CPU slot: the classifier actors hold one
    each, and on a small machine they hold them all (reads that wait for a slot never run)."""
    import ray.data

    free = {"num_cpus": 0}

    if fmt in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        return ray.data.read_csv(files, parse_options=pacsv.ParseOptions(
            delimiter="\t" if fmt == "tsv" else ","), file_extensions=None, **free)
    if fmt in ("jsonl", "json"):
        return ray.data.read_json(files, lines=True, file_extensions=None, **free)
    if fmt == "parquet":
        return ray.data.read_parquet(files, file_extensions=None, **free)
    # one row per line, column "text"
    return ray.data.read_text(files, file_extensions=None, **free)


class _Writer:
    """One output file, written batch by batch (pyarrow's CSV and Parquet writers; JSON lines)."""

    def __init__(self, path: str, fmt: str):
        import pyarrow.fs as pafs

        self.fs, self.path = (storage.filesystem(path) if storage.is_uri(path)
                              else (pafs.LocalFileSystem(), path))
        self.fmt, self.stream, self.writer = fmt, self.fs.open_output_stream(self.path), None

    def write(self, table: Any) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if self.fmt in ("csv", "tsv"):
            if self.writer is None:
                self.writer = pacsv.CSVWriter(self.stream, table.schema, write_options=pacsv
                                              .WriteOptions(delimiter="\t" if self.fmt == "tsv"
                                                            else ","))
            self.writer.write_table(table)
        elif self.fmt == "parquet":
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.stream, table.schema)
            self.writer.write_table(table)
        else:
            from ..core.jsonio import dumps

            rows = table.to_pylist()  # strict JSON: a NaN in an input column becomes null
            self.stream.write("".join(dumps(r, ensure_ascii=False) + "\n"
                                      for r in rows).encode("utf-8"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.stream.close()


def _check_columns(file: str, fmt: str, text_column: str) -> None:
    """The text column is in the first file's header: one line before Ray Data reads anything."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    local = str(storage.fetch(file)) if storage.is_uri(file) else file
    if fmt == "txt":
        if text_column != "text":
            raise InputError("--input", f"a .txt file's one column is 'text', not '{text_column}'",
                            file=file)
        return
    if fmt == "parquet":
        names = pq.read_schema(local).names
    elif fmt in ("csv", "tsv"):
        reader = pacsv.open_csv(local, parse_options=pacsv.ParseOptions(
            delimiter="\t" if fmt == "tsv" else ","))
        names = reader.schema.names
    else:
        import json

        with open(local, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        try:
            names = list(json.loads(first)) if first else []
        except (json.JSONDecodeError, TypeError):
            raise InputError("--input", "not JSON lines (one object per line)",
                            file=file) from None
    if text_column not in names:
        raise InputError("--input", f"no column '{text_column}' (the file has: "
                        f"{', '.join(names) or 'none'}); give --text-column", file=file)


def predict_file(model: str, input: str, output: str, *, text_column: str = "text",
                 batch_size: int = 64, workers: int | None = None, address: str | None = None,
                 overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Label every row of ``input`` with the classifier ``model`` into ``output``; returns the row
    count, seconds and rows per second."""
    import ray

    from ..cluster import connect

    if not is_classifier(model):
        Classifier.load(model)  # its one-line ModelError says why
    out_fmt = Path(output.split("?")[0]).suffix.lower().lstrip(".")
    if out_fmt not in ("csv", "tsv", "jsonl", "json", "parquet"):
        raise ConfigError(f"--output {output}: a .csv, .tsv, .jsonl or .parquet file")
    if storage.exists(output) and not overwrite:
        raise ConfigError(f"--output {output}: exists (give --overwrite to replace it)")
    # absolute: Ray Data's readers run in workers, whose working directory is not this one
    files = [f if storage.is_uri(f) else str(Path(f).absolute())
             for f in input_files(input, "--input")]
    fmt = Path(files[0].split("?")[0]).suffix.lower().lstrip(".")
    assert fmt in FORMATS
    _check_columns(files[0], fmt, text_column)
    started = connect(address)
    t0 = time.perf_counter()
    tmp = _partial(output)
    rows = 0
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # output rows in input order
        ctx.target_max_block_size = BLOCK_BYTES
        ctx.enable_progress_bars = False  # one bar of our own, on rows
        _quiet_ray_data()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = workers or max(1, gpus or int(resources.get("CPU", 1)))
        per = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        ds = _reader(files, fmt).map_batches(
            ClassifierBatch, fn_constructor_kwargs={
                "model": str(Path(model).absolute()), "text_column": text_column,
                "batch_size": batch_size, "threads": None if gpus else 1},
            batch_size=max(batch_size, 256), batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=n), **per)
        from tqdm import tqdm

        writer = _Writer(tmp, out_fmt)
        try:
            with tqdm(desc="rows labelled", unit=" rows", disable=not progress,
                      file=sys.stderr) as bar:
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write(batch)
                    rows += batch.num_rows
                    bar.update(batch.num_rows)
        except Exception as e:
            bad = _input_error(e, input)
            if bad is None:
                raise
            raise bad from None
        finally:
            writer.close()
        _publish(tmp, output)
    except BaseException:
        storage.delete(tmp) if storage.exists(tmp) else None
        raise
    finally:
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - t0
    return {"rows": rows, "seconds": seconds, "rows_per_second": rows / max(seconds, 1e-9),
            "output": output}


def _quiet_ray_data() -> None:
    """Ray Data's INFO lines (its execution plan, where its logs are) and its notice that its own
    progress bars are off (this command draws one bar, on rows) stay out of the output; its
    warnings about the job itself stay in."""
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def _input_error(err: BaseException, input: str) -> InputError | None:
    """A read failure inside the Ray Data job (the file vanished, a row the parser rejects) as one
    line naming the input; None for anything else (a bug keeps its traceback)."""
    import pyarrow as pa

    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    for e in chain:
        cause = getattr(e, "cause", None)
        for x in (e, cause):
            if isinstance(x, (OSError, pa.ArrowInvalid, UnicodeDecodeError)):
                reason = (str(x).strip().splitlines() or [type(x).__name__])[0][:200]
                return InputError("--input", f"cannot read it: {reason}", file=input)
    return None


def _partial(output: str) -> str:
    if storage.is_uri(output):
        return output + f".partial-{os.getpid()}"
    p = Path(output).expanduser().absolute()
    return str(p.with_name(f".{p.name}.partial-{os.getpid()}"))


def _publish(tmp: str, output: str) -> None:
    if storage.is_uri(output):
        fs, src = storage.filesystem(tmp)
        fs.move(src, storage.filesystem(output)[1])
    else:
        os.replace(tmp, Path(output).expanduser())
