"""``RunOutputs``: where a run's outputs live: ``output_dir`` itself, or, when ``output_dir`` is a
storage URI (``s3://bucket/prefix``, :mod:`raymeta.storage`), a local staging directory mirrored to
it.

The trainer, its tracker and its validator write local files only (TensorBoard, safetensors,
matplotlib need paths). With a URI, they write into the staging directory, and this class copies to
the URI at the moments that matter, as Ray Train persists a trial's checkpoints to its
``storage_path``:

- each checkpoint, once complete, with its manifest as the last object
  (:func:`~raymeta.train.checkpoint_mirror.push_checkpoint`), then the run's other files
  (``metrics.jsonl``, ``tensorboard/``, ``config.yaml``, ``best/``);
- at the end, ``final/`` and the plots.

So a head node that is replaced, or a job resubmitted on another cluster, resumes from the bucket
(:meth:`RunOutputs.resume_point` pulls the newest complete checkpoint and the run's files back), and
a step after the last checkpoint is lost exactly as it is on a local disk.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from .. import storage
from ..core.checkpoint import latest_checkpoint
from ..errors import RaymetaError
from ..tasks.holdout import HOLDOUT_JSON
from .checkpoint_mirror import pull_latest_checkpoint, push_checkpoint

__all__ = ["RunOutputs", "RUN_OUTPUTS", "check_writable", "held_outputs", "prepare_output_dir",
           "remove_outputs"]

log = logging.getLogger("raymeta.train")

WORKERS_JSON = "workers.json"  # resources.workers: which worker owns which task

# What a run writes into its output_dir; a directory holding any of them holds a run.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "final", "best",
               ".validation",
               "task_affinity.png", "task_affinity.npy", "task_weights.png", "training_curves.png",
               HOLDOUT_JSON, WORKERS_JSON)
# checkpoints go one by one, manifest last; .validation is scratch
_NOT_MIRRORED = ("checkpoints", ".validation")


class RunOutputs:
    """``local``: the directory the run writes into. ``uri``: the storage URI it is mirrored to
    (None: a local ``output_dir``, written in place)."""

    def __init__(self, output_dir: str):
        self.uri = output_dir.rstrip("/") if storage.is_uri(output_dir) else None
        if self.uri is not None:
            # no credentials inside it: it is saved with the config
            storage.check_uri(self.uri, "output_dir")
        if self.uri is None:
            self.local = Path(output_dir)
        else:
            self.local = Path(tempfile.mkdtemp(prefix="raymeta-staging-",
                                               dir=storage.staging_root()))
        self._sent: dict[str, tuple] = {}  # mirrored file -> (size, mtime) when it was last sent

    def __str__(self) -> str:
        return self.uri or str(self.local)

    def where(self, name: str) -> str:
        """Where ``name`` (``final``, ``best``) of this run is, for the user: a URI or a local
        path."""
        return storage.join(self.uri, name) if self.uri else str(self.local / name)

    def shown(self, path: Path | str) -> str:
        """``path`` under the staging directory, as the user knows it: under the URI."""
        if self.uri is None:
            return str(path)
        try:
            return storage.join(self.uri, Path(path).relative_to(self.local).as_posix())
        except ValueError:
            return str(path)

    def check_writable(self) -> None:
        """Fail now, in one line naming the URI, when the bucket is missing or the credentials are
        refused."""
        if self.uri is not None:
            check_writable(self.uri)

    def resume_point(self) -> Path | None:
        """The newest complete checkpoint (local: in place; a URI: pulled into staging with the
        run's files)."""
        if self.uri is None:
            return latest_checkpoint(self.local)
        ckpt = pull_latest_checkpoint(storage.join(self.uri, "checkpoints"),
                                      self.local / "checkpoints")
        if ckpt is not None:
            for name in storage.listing(self.uri):
                if name in RUN_OUTPUTS and name not in _NOT_MIRRORED:
                    storage.download(storage.join(self.uri, name), self.local / name)
            self._sent = self._signature()
        return ckpt

    def start_point(self, *, resume: bool, resume_from: Path | None) -> Path | None:
        """The checkpoint a run starts from: ``resume_from``; with ``resume``, the newest complete
        one here (none is one line: a typo in output_dir must not train anew); else None."""
        if resume_from is not None:
            return Path(resume_from)
        ckpt = self.resume_point() if resume else None
        if resume and ckpt is None:
            how = "start it over with --overwrite instead of --resume" if held_outputs(str(self)) \
                else "leave out --resume to start from step 0"
            raise RaymetaError("--resume: no complete checkpoint to resume from under output_dir "
                               f"{self} ({how})")
        return ckpt

    def checkpoint_saved(self, path: Path, keep_last: int) -> None:
        if self.uri is not None:
            push_checkpoint(path, storage.join(self.uri, "checkpoints"), keep_last=keep_last)
            self.mirror()

    def mirror(self) -> None:
        """Send the run's files that changed since the last call (a URI only)."""
        if self.uri is None:
            return
        now = self._signature()
        for rel, sig in now.items():
            if self._sent.get(rel) != sig:
                storage.upload(self.local / rel, storage.join(self.uri, rel))
        self._sent = now

    def _signature(self) -> dict[str, tuple]:
        out = {}
        for p in sorted(self.local.rglob("*")):
            rel = p.relative_to(self.local)
            top = rel.parts[0]
            if p.is_file() and top not in _NOT_MIRRORED and not top.startswith("."):
                st = p.stat()
                out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
        return out

    def close(self) -> None:
        """Remove the staging directory (a URI only: everything in it has been sent)."""
        if self.uri is not None:
            shutil.rmtree(self.local, ignore_errors=True)


def check_writable(uri: str) -> None:
    """One small object written and deleted under ``uri``: a missing bucket or refused credentials
    fail here, in one line naming ``output_dir``, before anything runs or is written anywhere."""
    probe = storage.join(uri, ".raymeta-write-probe")
    try:
        storage.write_bytes(probe, b"")
        storage.delete(probe)
    except storage.StorageError as e:
        raise storage.StorageError(f"output_dir {uri}", e.reason) from None


def held_outputs(output_dir: str) -> list[str]:
    """The names of :data:`RUN_OUTPUTS` that ``output_dir`` (a path or a URI) holds."""
    if storage.is_uri(output_dir):
        check_writable(output_dir)
        listed = storage.listing(output_dir)
        return [name for name in RUN_OUTPUTS if name in listed]
    out = Path(output_dir)
    return [name for name in RUN_OUTPUTS if (out / name).exists()]


def remove_outputs(output_dir: str, names: list[str]) -> None:
    """Delete each of ``names`` (a directory with everything in it, or a file) from
    ``output_dir``, a path or a URI."""
    for name in names:
        storage.delete(storage.join(output_dir, name))


def prepare_output_dir(output_dir: str | Path, *, resume: bool, overwrite: bool,
                       dry_run: bool = False) -> None:
    """Before ``raymeta train`` writes into ``output_dir``, as Hugging Face's
    ``overwrite_output_dir`` has it: a directory that already holds a run is refused unless the run
    is continued (``--resume``) or started over (``--overwrite``, which first removes that run's
    outputs, so that no old metrics, checkpoints or TensorBoard events mix with the new ones).
    Files of the user's own in the directory are left alone. ``dry_run`` (``raymeta train
    --dry-run``): the same refusals, and nothing removed."""
    out = str(output_dir)
    if resume and overwrite:
        raise RaymetaError("--resume continues the run in output_dir, --overwrite starts it over: "
                           "give one of them")
    held = held_outputs(out)
    if resume or not held:
        return
    if not overwrite:
        raise RaymetaError(f"output_dir {out} already holds a run ({', '.join(held)}): add "
                           "--resume to continue it, or --overwrite to start it over")
    if dry_run:
        return
    remove_outputs(out, held)
    log.warning("--overwrite: removed the previous run's %s from %s", ", ".join(held), out)
