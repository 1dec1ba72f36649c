"""Ready-made tasks and config task entries as raw dicts, before the schema check; shipped
experiment configs by name.

The YAML files live in ``raymeta/tasks/catalog/`` and ``raymeta/configs/`` (package data, so
``raymeta tasks list`` and ``raymeta train --config starter`` work after a plain ``pip install``;
the repository's top-level ``configs`` is a link to the latter). This module only reads and merges
them; it imports nothing but :mod:`raymeta.errors`, so :mod:`raymeta.config` can resolve ``{use:
NAME, ...}`` entries while :mod:`raymeta.tasks.registry` checks them against the config's schema
(arrows one way: ``tasks.registry`` → ``config`` → ``catalog``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["CATALOG_DIR", "CONFIGS_DIR", "catalog_names", "config_names", "config_file",
           "read_task", "merge_keys", "expand_task_entries", "task_directory",
           "resolve_task_entry", "anchor_paths"]

CATALOG_DIR = Path(__file__).parent / "tasks" / "catalog"
CONFIGS_DIR = Path(__file__).parent / "configs"
_YAML = (".yaml", ".yml")


def catalog_names() -> list[str]:
    return sorted(p.stem for p in CATALOG_DIR.glob("*.yaml"))


def config_names() -> list[str]:
    """The shipped experiment configs, by the names ``--config`` takes: ``starter``,
    ``recipes/huffpost``..."""
    return sorted(p.relative_to(CONFIGS_DIR).with_suffix("").as_posix()
                  for p in CONFIGS_DIR.rglob("*.yaml"))


def config_file(name_or_path: str | Path) -> Path:
    """``--config`` -> a YAML file: an existing file as given, else a shipped config by name.

    A name may carry ``.yaml`` and the repository's ``configs/`` prefix, so the documented
    ``--config configs/starter.yaml`` also works where only the package is installed (a wheel, a Ray
    job's working directory without the link). A file that exists always wins over a shipped
    name."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_absolute():
        raise ConfigError(f"config file {p}: not found")
    name = (p.with_suffix("") if p.suffix in _YAML else p).as_posix().removeprefix("configs/")
    if name in config_names():
        return CONFIGS_DIR / f"{name}.yaml"
    raise ConfigError(f"config file {name_or_path}: not found, nor a shipped config "
                      f"({', '.join(config_names())})")


def _yaml_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"task file {path}:{where}: YAML does not parse: "
                          f"{getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"task file {path}: must be a mapping of task keys")
    return data


def read_task(name_or_file: str, base: Path) -> tuple[dict[str, Any], str]:
    """A ready-made task's dict, or a task YAML file's (``base``: where relative paths start), and
    where it came from, for error messages."""
    if name_or_file in catalog_names():
        return _yaml_file(CATALOG_DIR / f"{name_or_file}.yaml"), f"task '{name_or_file}'"
    for cand in (Path(name_or_file), base / name_or_file):
        if cand.suffix in (".yaml", ".yml") and cand.is_file():
            return anchor_paths(_yaml_file(cand), cand.parent), f"task file {cand}"
    raise ConfigError(
        f"task '{name_or_file}': not a ready-made task ({', '.join(catalog_names())}) nor a task "
                      "YAML file"
    )


def _relative(path: Any) -> bool:
    return (isinstance(path, str) and "${data_dir}" not in path
            and not Path(path).expanduser().is_absolute())


def anchor_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``raw`` with ``source.base_dir`` set to ``folder`` (absolute) when its ``source.files`` holds
    a relative path (not ``${data_dir}``, not absolute) and no ``base_dir`` is given: such a path
    means the file's folder, not the current directory. Anything else is returned as it is (a
    ready-made task's ``${data_dir}`` paths)."""
    src = raw.get("source")
    if (not isinstance(src, dict) or src.get("base_dir") is not None
            or not isinstance(src.get("files"), dict)):
        return raw
    paths = [p for v in src["files"].values() for p in (v if isinstance(v, list) else [v])]
    if not any(_relative(p) for p in paths):
        return raw
    return {**raw, "source": {**src, "base_dir": str(folder.resolve())}}


def merge_keys(raw: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``over``'s keys set, nested mappings merged key by key (a new dict; ``raw`` is
    kept)."""
    out = dict(raw)
    for k, v in over.items():
        out[k] = merge_keys(out[k], v) if isinstance(v, dict) and isinstance(out.get(k),
                                                                             dict) else v
    return out


def task_directory(entry: Any, base: Path) -> Path | None:
    """The folder a task entry names (``DIR/`` or ``{use: DIR, ...}``), when it names one."""
    use = entry.get("use") if isinstance(entry, dict) else entry
    if not isinstance(use, str) or use in catalog_names():
        return None
    for cand in (Path(use).expanduser(), base / use):
        if cand.is_dir():
            return cand
    return None


def expand_task_entries(entries: list[Any], base: Path) -> list[Any]:
    """``entries`` with each one that names a folder replaced by one entry per task YAML in it
    (``*.yaml``, ``*.yml``; sorted by file name, so the order is the same on every machine), each
    with the entry's other keys (``{use: tasks/, weight: 0.5}``: every task in ``tasks/`` at 0.5).
    A folder without task YAML is one line."""
    out: list[Any] = []
    for entry in entries:
        folder = task_directory(entry, base)
        if folder is None:
            out.append(entry)
            continue
        files = sorted(p for p in folder.iterdir() if p.suffix in _YAML and p.is_file())
        if not files:
            raise ConfigError(f"config key 'tasks': folder {folder} holds no task YAML "
                              "(*.yaml, *.yml)")
        over = {k: v for k, v in entry.items() if k != "use"} if isinstance(entry, dict) else {}
        out += [{"use": str(f.resolve()), **over} for f in files]
    return out


def resolve_task_entry(entry: Any, *, data_dir: str, base: Path) -> dict[str, Any]:
    """A config's task entry -> a task dict: ``NAME`` | ``{use: NAME_OR_FILE, ...overrides}`` | full
    dict."""
    if isinstance(entry, str):
        entry = {"use": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"config key 'tasks': entries are names or mappings, got {entry!r}")
    # an inline task: its relative paths start where ``use:`` files are looked up too
    if "use" not in entry:
        return entry if base == Path(".") else anchor_paths(entry, base)
    over = {k: v for k, v in entry.items() if k != "use"}
    raw, _ = read_task(str(entry["use"]), base)
    return merge_keys(raw, over)
