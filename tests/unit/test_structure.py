"""The package's shape, read with ``ast`` (nothing is imported): no import circles between raymeta's
modules, no module importing another's ``_private`` names, and every third-party package the code
imports declared in pyproject.toml: in ``dependencies``, or in an optional extra (``setfit``) when
every import of it is inside a function, so that raymeta imports and runs without the extra."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the `test` extra installs tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "raymeta"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """Every import in the module, function-local ones included: (absolute module, imported name or
    None, line)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out += [(target, a.name, node.lineno) for a in node.names]
    return out


def import_graph() -> dict[str, set[str]]:
    """raymeta module -> the raymeta modules it imports. Importing ``a.b.c`` also runs ``a.b``'s
    ``__init__``, so a module outside a subpackage that imports from it depends on the subpackage
    too (the top-level ``raymeta`` package itself is left out: every module would depend on it)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, name, _ in _imports(module, path):
            # `from . import x`: the submodule x
            if name is not None and f"{target}.{name}" in MODULES:
                target = f"{target}.{name}"
            if target not in MODULES:
                continue
            parts = target.split(".")
            # the target and its parent packages below the top level
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep != module and not module.startswith(dep + "."):
                    graph[module].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    # function-local imports count too
    assert len(graph) > 30 and "raymeta.train.trainer" in graph["raymeta.cli"]
    found = cycles(graph)
    detail = [" ↔ ".join(c) + ": " + "; ".join(f"{m} imports {sorted(graph[m] & set(c))}"
                                               for m in c) for c in found]
    assert not found, "import circles: " + " | ".join(detail)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, path in MODULES.items():
        for target, name, line in _imports(module, path):
            if target.startswith("raymeta") and target != module and name and name.startswith("_") \
                    and not name.startswith("__") and f"{target}.{name}" not in MODULES:
                bad.append(f"{path.relative_to(REPO)}:{line}: from {target} import {name}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


# Import names whose distribution is named differently, for when the package is not installed here
# (installed ones are looked up in their metadata).
KNOWN = {"yaml": "pyyaml", "sklearn": "scikit-learn", "tensorboardX": "tensorboardx",
         "PIL": "pillow"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(deps: list[str]) -> set[str]:
    return {_normalise(re.match(r"[A-Za-z0-9_.\-]+", d).group(0)) for d in deps}


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return _names(project["dependencies"])


def _declared_extras() -> set[str]:
    """Every distribution of pyproject.toml's optional extras (``raymeta[...]`` self-references left
    out)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return _names([d for deps in extras.values() for d in deps if not d.startswith("raymeta")])


def _top_level_lines(path: Path) -> set[int]:
    """Lines of the imports that run when the module is imported (not inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    local = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef,
                                                                ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return {n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))} - local


def third_party_imports() -> dict[str, list[str]]:
    """Top-level import name -> the files importing it, for everything neither stdlib nor
    raymeta."""
    out: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        for target, _, line in _imports(module, path):
            top = target.split(".")[0]
            if (top and top != "raymeta" and top not in sys.stdlib_module_names
                    and top != "__future__"):
                out.setdefault(top, []).append(f"{path.relative_to(REPO)}:{line}")
    return out


def test_every_imported_package_is_declared():
    installed = packages_distributions()
    declared, extras = _declared(), _declared_extras()
    top_level = {str(p.relative_to(REPO)): _top_level_lines(p) for p in MODULES.values()}
    missing, eager = [], []
    for top, where in sorted(third_party_imports().items()):
        dists = {_normalise(d) for d in installed.get(top, [])} | {_normalise(KNOWN.get(top, top))}
        if dists & declared:
            continue
        if not dists & extras:
            missing.append(f"{top} (distribution {' or '.join(sorted(dists))}; imported at "
                           f"{where[0]})")
        eager += [w for w in where if int(w.rpartition(":")[2]) in top_level[w.rpartition(":")[0]]]
    assert not missing, ("imported by raymeta/ but not in pyproject.toml's dependencies: "
                         + ", ".join(missing))
    assert not eager, ("an optional extra's package imported at module level (import it inside "
                       "the function): " + ", ".join(eager))


def test_the_extras_check_tells_lazy_from_eager_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import a\ntry:\n    import b\nexcept ImportError:\n    pass\n\ndef g():\n    "
                 "import c\n")
    assert _top_level_lines(f) == {1, 3}
    assert {"setfit", "sentence-transformers"} <= _declared_extras() and "setfit" not in _declared()


def test_the_dependency_check_sees_the_usual_suspects():
    # the checker itself: these are imported by raymeta and must be found (and mapped) by it
    found = third_party_imports()
    assert {"yaml", "pydantic", "torch", "ray", "sklearn"} <= set(found)
    assert {"pyyaml", "pydantic", "scikit-learn"} <= _declared()


# The layers (README "Layout"): each folder, and what it must never import, function-local
# imports included. ``core`` and ``tasks`` are pure (no Ray); ``core`` has no storage either (it
# reads and writes local paths; whoever holds a URI fetches it, or passes core a ``fetch``);
# ``cluster`` is Ray itself, below every user of it (train, eval, tune); ``eval`` scores inits and
# never reaches into training; the speed benchmark sits apart from the library (only the CLI
# calls it).
NEVER = {
    "raymeta.core": {"ray", "raymeta.storage", "raymeta.cluster", "raymeta.train", "raymeta.eval",
                     "raymeta.tune", "raymeta.speed", "raymeta.benchmark", "raymeta.cli",
                     "raymeta.classify"},
    "raymeta.tasks": {"ray", "raymeta.cluster", "raymeta.core", "raymeta.train", "raymeta.eval",
                      "raymeta.tune", "raymeta.speed", "raymeta.classify"},
    "raymeta.cluster": {"raymeta.train", "raymeta.eval", "raymeta.tune", "raymeta.speed",
                        "raymeta.benchmark", "raymeta.cli", "raymeta.classify"},
    "raymeta.eval": {"raymeta.train", "raymeta.tune", "raymeta.speed", "raymeta.benchmark",
                     "raymeta.cli", "raymeta.classify"},
    "raymeta.train": {"raymeta.tune", "raymeta.speed", "raymeta.benchmark", "raymeta.cli",
                      "raymeta.classify"},
    "raymeta.tune": {"raymeta.speed", "raymeta.benchmark", "raymeta.cli", "raymeta.classify"},
    # the deliverable sits on eval (its SetFit run, init resolution) and cluster; never on training
    "raymeta.classify": {"raymeta.train", "raymeta.tune", "raymeta.speed", "raymeta.benchmark",
                         "raymeta.cli"},
}


def layer_violations(modules: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in modules.items():
        for layer, never in NEVER.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for target, name, line in _imports(module, path):
                # `from .. import storage` imports raymeta.storage, though its target is "raymeta"
                what = f"{target}.{name}" if name and target == "raymeta" else target
                hit = next((n for n in never if what == n or what.startswith(n + ".")), None)
                if hit:
                    bad.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {what} "
                               f"({hit} is not allowed)")
    return bad


def test_layers_import_only_downwards():
    layers = {"raymeta.core", "raymeta.cluster", "raymeta.train", "raymeta.eval", "raymeta.tune",
              "raymeta.speed", "raymeta.classify"}
    assert layers <= set(MODULES)
    bad = layer_violations(MODULES)
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


def test_the_layer_check_sees_a_ray_import_in_core(tmp_path):
    pkg = tmp_path / "raymeta" / "core"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("def f():\n    import ray\n    from ..train import trainer\n")
    (tmp_path / "raymeta" / "eval").mkdir()
    (tmp_path / "raymeta" / "eval" / "e.py").write_text("from raymeta.train.actor import "
                                                        "TaskActor\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        found = layer_violations({"raymeta.core.m": pkg / "m.py",
                                  "raymeta.eval.e": tmp_path / "raymeta/eval/e.py"})
    finally:
        REPO = saved
    assert any("core imports ray" in b for b in found)
    assert any("core imports raymeta.train" in b for b in found)
    assert any("eval imports raymeta.train.actor" in b for b in found)


def _violations_of(tmp_path, files: dict[str, str]) -> list[str]:
    """:func:`layer_violations` of a synthetic package: relative path under raymeta/ -> source."""
    modules = {}
    for rel, text in files.items():
        path = tmp_path / "raymeta" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = ["raymeta", *Path(rel).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        return layer_violations(modules)
    finally:
        REPO = saved


def test_the_layer_check_sees_storage_and_cluster_in_core_and_train_in_eval_and_cluster(tmp_path):
    found = _violations_of(tmp_path, {
        "core/a.py": "from .. import storage\n",
        "core/b.py": "def f():\n    import raymeta.storage\n",
        "core/c.py": "def f():\n    from ..cluster import get\n    from raymeta import train\n",
        "core/d.py": "from ..storage import fetch\n",
        "eval/e.py": "def f():\n    from .. import train\n",
        "cluster/f.py": "from ..train.actor import TaskActor\n",
        "cluster/g.py": "def f():\n    from ..eval import evaluate\n"
                        "    from raymeta.tune.search import run_tune\n",
        "core/clean.py": "from .. import errors\nfrom ..config import ModelConfig\n"
                         "from .trainable import base_model\n",
        "eval/clean.py": "from .. import storage\nfrom ..cluster import connect\n"
                         "from ..core.model import load_encoder\n",
        "cluster/clean.py": "from ..config import ResourcesConfig\nfrom .gcs import ray_state\n"
                            "import ray\n",
    })
    expect = ["core/a.py:1: raymeta.core imports raymeta.storage",
              "core/b.py:2: raymeta.core imports raymeta.storage",
              "core/c.py:2: raymeta.core imports raymeta.cluster",
              "core/c.py:3: raymeta.core imports raymeta.train",
              "core/d.py:1: raymeta.core imports raymeta.storage",
              "eval/e.py:2: raymeta.eval imports raymeta.train",
              "cluster/f.py:1: raymeta.cluster imports raymeta.train.actor",
              "cluster/g.py:2: raymeta.cluster imports raymeta.eval",
              "cluster/g.py:3: raymeta.cluster imports raymeta.tune.search"]
    for e in expect:
        assert any(b.startswith("raymeta/" + e + " ") for b in found), (e, found)
    assert not [b for b in found if "clean.py" in b], found
    assert len(found) == len(expect), found



# A module a reader takes in at one sitting; the outer loop on a few screens (issue 38).
MAX_MODULE_LINES = 600
MAX_TRAINER_LINES = 350


def long_modules(paths: list[Path], limit: int) -> list[tuple[Path, int]]:
    """Each file of ``paths`` longer than ``limit`` lines, with its length."""
    sizes = [(p, len(p.read_text(encoding="utf-8").splitlines())) for p in paths]
    return [(p, n) for p, n in sizes if n > limit]


def test_no_module_is_longer_than_a_sitting():
    found = long_modules(list(MODULES.values()), MAX_MODULE_LINES)
    assert not found, f"modules over {MAX_MODULE_LINES} lines: " + \
        ", ".join(f"{p.relative_to(REPO)} ({n})" for p, n in found)
    assert not long_modules([MODULES["raymeta.train.trainer"]], MAX_TRAINER_LINES)


def test_the_length_check_sees_a_long_module(tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * 11)
    (tmp_path / "short.py").write_text("x = 1\n" * 10)
    assert long_modules([tmp_path / "long.py", tmp_path / "short.py"], 10) == \
        [(tmp_path / "long.py", 11)]
