"""Checkpoints on a storage URI (:mod:`raymeta.storage`), for
:class:`~raymeta.train.outputs.RunOutputs`: send a complete local checkpoint up with its manifest as
the last object, and pull the newest complete one back.

An object store has no rename, so the rule of :mod:`raymeta.core.checkpoint` (a checkpoint counts
only when its manifest is there and every file matches it) is what makes these checkpoints atomic
too: an upload cut short leaves no manifest, and is passed over.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .. import storage
from ..core.checkpoint import MANIFEST, checkpoint_problem, is_step_dir

__all__ = ["push_checkpoint", "pull_latest_checkpoint"]

log = logging.getLogger("raymeta.train")


def push_checkpoint(path: Path, remote_root: str, *, keep_last: int) -> str:
    """Upload the complete local checkpoint ``path`` to ``<remote_root>/<name>``, its manifest last,
    so that it counts there only once every file is; then delete the remote checkpoints after it
    (another timeline's) and the ones before the ``keep_last`` newest. Returns its URI."""
    listed = storage.listing(remote_root)
    target = storage.join(remote_root, path.name)
    for later in sorted(n for n in listed if is_step_dir(n) and n > path.name):
        storage.delete(storage.join(remote_root, later))
    # a leftover of an upload that was cut short: its files are not this checkpoint's
    storage.delete(target)
    storage.upload(path, target, last=(MANIFEST,))
    done = sorted(n for n in storage.listing(remote_root) if is_step_dir(n) and n <= path.name)
    for old in done[:-keep_last]:
        storage.delete(storage.join(remote_root, old))
    return target


def pull_latest_checkpoint(remote_root: str, local_root: Path) -> Path | None:
    """The newest complete checkpoint under the URI ``remote_root``, downloaded into ``local_root``
    and checked against its manifest; a damaged or incomplete one (no manifest: its upload was cut
    short) is passed over with a warning naming the file."""
    names = sorted((n for n in storage.listing(remote_root) if is_step_dir(n)), reverse=True)
    for name in names:
        uri = storage.join(remote_root, name)
        if not storage.exists(storage.join(uri, MANIFEST)):
            log.warning("checkpoint %s/%s is incomplete (no %s: its upload was cut short); trying "
                        "an older one", uri, MANIFEST, MANIFEST)
            continue
        local = local_root / name
        shutil.rmtree(local, ignore_errors=True)
        storage.download(uri, local)
        problem = checkpoint_problem(local)
        if problem is None:
            return local
        log.warning("checkpoint %s is incomplete or damaged (%s); trying an older one", uri,
                    problem.replace(str(local), uri))
        shutil.rmtree(local, ignore_errors=True)
    return None
