"""User-facing errors.

Every mistake a user can make (a bad config key, a missing file, a bad row) raises a
subclass of :class:`RaymetaError`. The CLI prints ``str(err)`` as one line and exits
non-zero, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["RaymetaError", "ConfigError", "DataError", "InputError", "ModelError"]


class RaymetaError(Exception):
    """Base class of errors caused by user input. Its message is one line naming the culprit."""

    exit_code = 2


class ConfigError(RaymetaError):
    """A config key is unknown, of the wrong type or out of range."""


class DataError(RaymetaError):
    """A task's data is bad: missing file or column, unknown label, empty split, bad span."""

    _file_label = ", file "

    def __init__(self, task: str, message: str, *, file: str | None = None, row: int | None = None):
        where = self._culprit(task)
        if file is not None:
            where += f"{self._file_label}{file}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {message}")
        self.task, self.file, self.row, self.message = task, file, row, message

    @staticmethod
    def _culprit(task: str) -> str:
        return f"task '{task}'"

    def __reduce__(self):
        # Pickle-able, so the error crosses from a Ray actor to the driver as itself.
        return (type(self), (self.task, self.message), {"file": self.file, "row": self.row,
                                                        "args": self.args})

    def __setstate__(self, state):
        self.file, self.row, self.args = state["file"], state["row"], state["args"]


class InputError(DataError):
    """A command's input file is bad (``raymeta fit --train``, ``raymeta predict --input``): the
    culprit is the argument and its file, not a task: ``--train data.csv, row 4: ...``."""

    _file_label = " "

    @staticmethod
    def _culprit(task: str) -> str:
        return task


class ModelError(RaymetaError):
    """A model or checkpoint cannot be loaded (not a model, wrong architecture, truncated file)."""
