"""Ready-made tasks and config task entries as checked :class:`~raymeta.config.TaskConfig` objects.

Reading and merging the YAML is :mod:`raymeta.catalog` (below :mod:`raymeta.config`, which resolves
a config's entries with it); this module adds the check against the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..catalog import CATALOG_DIR, catalog_names, merge_keys, read_task, resolve_task_entry
from ..config import TaskConfig, check_task

__all__ = ["CATALOG_DIR", "catalog_names", "task_config", "resolve_task_entry", "task_from_entry"]


def task_config(name_or_file: str, base: Path | str = ".", **overrides: Any) -> TaskConfig:
    """A ready-made task by name, or a task YAML file, with key overrides."""
    raw, origin = read_task(name_or_file, Path(base))
    return check_task(merge_keys(raw, overrides), origin=origin)


def task_from_entry(entry: Any, *, data_dir: str, base: Path | str = ".") -> TaskConfig:
    """A config's task entry (``eval.tasks`` and the like) as a checked :class:`TaskConfig`."""
    raw = resolve_task_entry(entry, data_dir=data_dir, base=Path(base))
    return check_task(raw, origin=f"task entry {entry!r}")
