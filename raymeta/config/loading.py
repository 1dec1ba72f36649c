"""Reading a config: defaults -> YAML file -> ``key=value`` dotted overrides -> one checked
:class:`~raymeta.config.experiment.ExperimentConfig`, every failure a one-line
:class:`~raymeta.errors.ConfigError` naming the key; and writing the resolved one back
(:func:`save_config`), secrets redacted."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..catalog import config_file, expand_task_entries, resolve_task_entry
from ..errors import ConfigError
from .base import DEFAULT_DATA_DIR
from .experiment import ExperimentConfig
from .redaction import redact
from .tasks import TaskConfig

__all__ = ["parse_overrides", "apply_overrides", "load_config", "check_task", "config_yaml",
           "save_config"]


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # one line: where it broke
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {p}:{where}: YAML does not parse: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping, got "
                          f"{type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["meta.steps=10", "tasks.bbc_news.weight=2"]`` -> ``[(key, value), ...]``.

    Values are parsed as YAML scalars/lists, so ``10`` is an int and ``[4,8]`` a list.
    """
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
            raise ConfigError(f"override '{item}': expected key=value with a dotted key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def _step(node: Any, part: str, key: str) -> tuple[Any, Any]:
    """Resolve one dotted component. Lists accept an index or (for tasks) a task name."""
    if isinstance(node, list):
        if part.isdigit():
            i = int(part)
            if i >= len(node):
                raise ConfigError(f"config key '{key}': index {i} out of range ({len(node)} "
                                  "entries)")
            return node, i
        for i, entry in enumerate(node):
            if isinstance(entry, dict) and part in (entry.get("name"), entry.get("use")):
                return node, i
        raise ConfigError(f"config key '{key}': no entry named '{part}'")
    if isinstance(node, dict):
        return node, part
    raise ConfigError(f"config key '{key}': cannot descend into a {type(node).__name__}")


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a raw config dict (in place). Unknown keys are caught by the schema
    check."""
    for key, value in overrides:
        parts = key.split(".")
        node: Any = data
        for part in parts[:-1]:
            parent, idx = _step(node, part, key)
            if isinstance(parent, dict) and not isinstance(parent.get(idx), (dict, list)):
                parent[idx] = {}
            node = parent[idx]
        parent, idx = _step(node, parts[-1], key)
        parent[idx] = value
    return data


def _format_error(err: ValidationError, data: dict[str, Any]) -> str:
    e = err.errors()[0]
    loc = list(e["loc"])
    # Name a task by its name rather than its index: "tasks.clinc150.weight".
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        try:
            entry = data["tasks"][loc[1]]
            loc[1] = entry.get("name") or entry.get("use") or loc[1]
        except (KeyError, IndexError, AttributeError):
            pass
    # pydantic appends the union member / validator name to loc; keep only real keys.
    loc = [str(x) for x in loc
           if not (isinstance(x, str) and ("[" in x or x.startswith(("function-",
                                                                      "constrained-"))))]
    key = ".".join(loc) or "<root>"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif ("input" in e and e["type"] not in ("missing",)
          and not isinstance(e["input"], (dict, list))):
        msg += f" (got {e['input']!r})"
    return f"config key '{key}': {msg}"


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    data: dict[str, Any] | None = None,
) -> ExperimentConfig:
    """defaults -> YAML (``path`` or ``data``) -> ``key=value`` overrides -> checked config.

    ``path`` is a YAML file, or the name of a config shipped in ``raymeta/configs/`` (``starter``,
    ``recipes/huffpost``: :func:`raymeta.catalog.config_file`); an unknown one is an error listing
    those.

    Task entries may be full task dicts, or ``{use: NAME_OR_FILE, ...}`` to start from a
    ready-made task (or a task YAML) and override some of its keys (weight, include_labels...);
    ``DIR`` or ``{use: DIR, ...}`` is every task YAML in a folder, each with those overrides.
    """
    raw: dict[str, Any] = dict(data or {})
    base = Path(".")
    if path is not None:
        # a file, or a shipped config by name (``starter``, ``recipes/huffpost``)
        path = config_file(path)
        raw = _read_yaml(path)
        base = path.parent
    apply_overrides(raw, parse_overrides(overrides or []))
    data_dir = str(raw.get("data_dir") or os.environ.get("RAYMETA_DATA_DIR", DEFAULT_DATA_DIR))
    if "tasks" in raw:
        if not isinstance(raw["tasks"], list):
            raise ConfigError("config key 'tasks': must be a list of task entries")
        raw["tasks"] = [resolve_task_entry(t, data_dir=data_dir, base=base)
                        for t in expand_task_entries(raw["tasks"], base)]
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, raw)) from None
    return cfg


def check_task(raw: dict[str, Any], *, origin: str) -> TaskConfig:
    """One task dict (from a task YAML or a config entry) checked against the schema, as a
    :class:`TaskConfig`; a one-line error that starts with ``origin`` otherwise."""
    try:
        return TaskConfig.model_validate(raw)
    except ValidationError as e:
        msg = _format_error(e, {})
        raise ConfigError(f"{origin}: {msg}") from None


def config_yaml(cfg: ExperimentConfig) -> str:
    """The fully resolved config as YAML, every default filled in and secrets redacted: what
    :func:`save_config` writes and ``raymeta config show`` prints."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)


def save_config(cfg: ExperimentConfig, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config (secrets redacted) into ``directory`` atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / name
    tmp = d / f".{name}.tmp"
    tmp.write_text(config_yaml(cfg), encoding="utf-8")
    os.replace(tmp, target)
    return target
