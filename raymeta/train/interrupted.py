"""What an interrupted run says (Ctrl-C, or SIGTERM: :class:`raymeta.cluster.connect.Terminated`):
the step it reached, its last checkpoint, and the command that continues it
(docs/checkpoints.md)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..core.checkpoint import latest_checkpoint
from .outputs import held_outputs

if TYPE_CHECKING:
    from .trainer import MetaTrainer

__all__ = ["interrupted_message"]

_STEP = re.compile(r"step-(\d+)$")


def interrupted_message(trainer: MetaTrainer, command: Sequence[str]) -> str:
    """One line: ``interrupted at step N``, the last checkpoint (or that there is none), and
    ``command`` (the run's command line, without ``--resume`` or ``--overwrite``) with the flag
    that continues the run from it, or starts it over from step 0 when there is none."""
    where, step = _last_checkpoint(trainer)
    at = max(trainer.step, step or 0)  # a --resume interrupted before its checkpoint was restored
    if where is not None:
        which = f"step {step} ({where})" if step is not None else \
            f"the newest complete one under {where}"
        return (f"interrupted at step {at}; the last checkpoint is {which}: "
                f"continue with {shlex.join([*command, '--resume'])}")
    # nothing to resume: the next run starts over (--overwrite: past the run's files written so far)
    local = trainer.outputs.uri is None
    again = [*command, "--overwrite"] if local and held_outputs(str(trainer.out)) else command
    return (f"interrupted at step {at}, before the first checkpoint: the run starts over from step "
            f"0 with {shlex.join(again)}")


def _last_checkpoint(trainer: MetaTrainer) -> tuple[str | None, int | None]:
    """Where the checkpoint ``--resume`` starts from is, for the user, and its step. A local
    ``output_dir`` is read (the newest complete checkpoint); under a storage URI, which is not
    listed, it is the last one this run saved or resumed from, shown under the URI (a save the
    interrupt cut short leaves the one before it there, which ``--resume`` then takes), or, for a
    ``--resume`` interrupted before it had pulled one, the URI's ``checkpoints/`` (no step)."""
    if trainer.outputs.uri is None:
        path: Path | None = latest_checkpoint(trainer.out, warn=False)
    else:
        path = trainer.last_checkpoint
        if path is None and trainer.resume:
            return trainer.outputs.where("checkpoints"), None
    if path is None or not (m := _STEP.search(Path(path).name)):
        return None, None
    return trainer.outputs.shown(path), int(m.group(1))
