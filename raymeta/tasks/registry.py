"""Ready-made tasks: YAML files in ``raymeta/tasks/catalog/`` (shipped with the package so
``raymeta tasks list`` works after a plain ``pip install``), and resolution of a config's
task entries (a name, a task YAML file, or a full task dict, each with overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import TaskConfig, validate_task
from ..errors import ConfigError

__all__ = ["CATALOG_DIR", "catalog_names", "task_config", "resolve_task_entry", "task_from_entry"]

CATALOG_DIR = Path(__file__).parent / "catalog"


def catalog_names() -> list[str]:
    return sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))


def _yaml_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"task file {path}:{where}: YAML does not parse: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"task file {path}: must be a mapping of task keys")
    return data


def _raw(name_or_file: str, base: Path) -> tuple[dict[str, Any], str]:
    if name_or_file in catalog_names():
        return _yaml_file(CATALOG_DIR / f"{name_or_file}.yaml"), f"task '{name_or_file}'"
    for cand in (Path(name_or_file), base / name_or_file):
        if cand.suffix in (".yaml", ".yml") and cand.is_file():
            return _yaml_file(cand), f"task file {cand}"
    raise ConfigError(
        f"task '{name_or_file}': not a ready-made task ({', '.join(catalog_names())}) nor a task YAML file"
    )


def task_config(name_or_file: str, base: Path | str = ".", **overrides: Any) -> TaskConfig:
    """A ready-made task by name, or a task YAML file, with key overrides."""
    raw, origin = _raw(name_or_file, Path(base))
    return validate_task(_merge(raw, overrides), origin=origin)


def _merge(raw: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_task_entry(entry: Any, *, data_dir: str, base: Path) -> dict[str, Any]:
    """A config's task entry -> a task dict: ``NAME`` | ``{use: NAME_OR_FILE, ...overrides}`` | full dict."""
    if isinstance(entry, str):
        entry = {"use": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"config key 'tasks': entries are names or mappings, got {entry!r}")
    if "use" not in entry:
        return entry
    over = {k: v for k, v in entry.items() if k != "use"}
    raw, _ = _raw(str(entry["use"]), base)
    return _merge(raw, over)


def task_from_entry(entry: Any, *, data_dir: str, base: Path | str = ".") -> TaskConfig:
    """A config's task entry (``eval.tasks`` and the like) as a validated :class:`TaskConfig`."""
    raw = resolve_task_entry(entry, data_dir=data_dir, base=Path(base))
    return validate_task(raw, origin=f"task entry {entry!r}")
