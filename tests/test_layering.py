"""The package's architecture, checked on its imports (every import, inside functions too).

- The core (``mrnet.core``) imports nothing of the project above it.
- Layers: core < {config, model} < data < {training, evaluation, inference} < datasets
  (kneemri, mura) < the command line; nothing imports a layer above its own, and the three
  jobs of the middle layer do not import one another (inference never imports training).
- Inference needs no training-loop code: nothing under ``mrnet.inference`` reaches
  ``mrnet.core.trainer`` or ``mrnet.training``, not even through other modules.
- No module imports another module's private (``_name``) definition.
- There are no import cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import PROJECT

PACKAGE = PROJECT / "mrnet"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The project module a dotted import name refers to (a module, or a package's face)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, module: str) -> list[tuple[str, str | None, int]]:
    """(imported project module, imported name or None, line) of every import in ``path``."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = resolve(a.name)
                if target:
                    out.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:  # from package import module
                    out.append((sub, None, node.lineno))
                elif resolve(base):
                    out.append((resolve(base), a.name, node.lineno))
    return out


GRAPH = {m: imports_of(p, m) for m, p in MODULES.items()}

# Layer of each top-level job; a module imports only its own layer and those below.
LAYERS = {
    "mrnet.core": 0,
    "mrnet": 1, "mrnet.config": 1, "mrnet.model": 1,
    "mrnet.data": 2,
    "mrnet.training": 3, "mrnet.evaluation": 3, "mrnet.inference": 3,
    "mrnet.kneemri": 4, "mrnet.mura": 4,
    "mrnet.cli": 5, "mrnet.__main__": 6,
}


def job(module: str) -> str:
    """The top-level job (folder or module) a module belongs to."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in LAYERS:
        return ".".join(parts[:2])
    return "mrnet"


def test_every_module_has_a_layer() -> None:
    assert {job(m) for m in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers(module: str) -> None:
    mine = job(module)
    bad = []
    for target, _, line in GRAPH[module]:
        theirs = job(target)
        if theirs == mine or target == "mrnet":
            continue
        if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine]):
            bad.append(f"line {line}: {target}")
    assert not bad, f"{module} imports a layer above its own or a sibling job: {bad}"


def test_core_imports_only_the_core() -> None:
    bad = [(m, t) for m in MODULES if job(m) == "mrnet.core"
           for t, _, _ in GRAPH[m] if job(t) != "mrnet.core"]
    assert not bad


def reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t, _, _ in GRAPH[m]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


@pytest.mark.parametrize("module", sorted(m for m in MODULES if job(m) == "mrnet.inference"))
def test_inference_needs_no_training_code(module: str) -> None:
    training = {m for m in reach(module)
                if m == "mrnet.core.trainer" or job(m) == "mrnet.training"}
    assert not training, f"{module} reaches training code: {sorted(training)}"


def test_no_private_names_across_modules() -> None:
    bad = [f"{m} line {line}: {t}.{name}" for m, edges in GRAPH.items()
           for t, name, line in edges
           if name and name.startswith("_") and not name.startswith("__") and t != m]
    assert not bad, bad


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in {t for t, _, _ in GRAPH[v] if t != v}:
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
                cycles.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_checker_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    # The checks above are only as good as the import reader: it must see an import inside a
    # function and a relative one.
    src = tmp_path / "mod.py"
    src.write_text("def f():\n    from . import viewer\n    from mrnet.core import io\n")
    found = {t for t, _, _ in imports_of(src, "mrnet.inference.mod")}
    assert {"mrnet.inference.viewer", "mrnet.core.io"} <= found
