"""dvc.yaml's graph is complete: every stage depends on exactly the project code it runs.

A stage's code is its entry point under ``stages/`` plus every project module it imports,
directly or through other project modules (imports inside functions included). A module
missing from ``deps`` means a code change reruns nothing; an extra one means an unrelated edit
reruns the stage (all nine trainings, say).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT

PACKAGES = ("mrnet", "stages")


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None when it is not project code."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = PROJECT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(path: Path) -> set[Path]:
    """Project files that ``path`` imports, with the ``__init__.py`` of each package on the way.

    Relative imports (``from . import viewer``) count as the absolute names they stand for.
    """
    found: set[Path] = set()
    names: list[str] = []
    rel = path.relative_to(PROJECT).with_suffix("").parts
    package = list(rel if path.name == "__init__.py" else rel[:-1])
    if package and package[-1] == "__init__":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                module = ".".join([*anchor, *([module] if module else [])])
            if not module:
                continue
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]  # submodules
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            file = module_file(".".join(parts[:i]))
            if file is not None:
                found.add(file)
    return found


def import_closure(entry: Path) -> set[str]:
    """``entry`` and every project file it imports transitively, as repo-relative paths."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += imported_files(path) - seen
    # The __init__.py files under stages/ only mark folders as packages: they hold no code.
    return {p.relative_to(PROJECT).as_posix() for p in seen
            if not (p.name == "__init__.py" and p.relative_to(PROJECT).parts[0] == "stages")}


# The project's pipelines; their stages run from the project root (mura's with `wdir: ..`),
# so every code path in them is relative to the root.
PIPELINES = ("dvc.yaml", "mura/dvc.yaml")


def stages() -> dict[str, dict]:
    out = {}
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load((PROJECT / pipeline).read_text())["stages"].items():
            out[name if pipeline == "dvc.yaml" else f"{pipeline}:{name}"] = stage
    return out


def entry_point(stage: dict) -> Path:
    cmd = stage.get("do", stage)["cmd"]
    found = re.search(r"python -m (stages(?:\.\w+)+)", cmd)
    assert found, f"stage command {cmd!r} does not run a stages/ module"
    return module_file(found.group(1))


def code_deps(stage: dict) -> set[str]:
    deps = stage.get("do", stage).get("deps", [])
    return {d for d in deps if isinstance(d, str) and d.endswith(".py")}


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_its_import_closure(name: str) -> None:
    stage = stages()[name]
    want = import_closure(entry_point(stage))
    have = code_deps(stage)
    assert not want - have, f"{name}: deps lack {sorted(want - have)}"
    assert not have - want, f"{name}: deps list code it never imports {sorted(have - want)}"


def test_closure_follows_imports_inside_functions_and_packages() -> None:
    # train.py imports dvclive lazily, and mrnet.data.reader through mrnet.training.cnn: both
    # count; the viewer does not train.
    closure = import_closure(PROJECT / "stages" / "train.py")
    assert {"stages/train.py", "mrnet/__init__.py", "mrnet/training/cnn.py",
            "mrnet/data/__init__.py", "mrnet/data/reader.py", "mrnet/config.py",
            "mrnet/core/trainer.py"} <= closure
    assert "mrnet/inference/viewer.py" not in closure


def test_closure_follows_relative_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative import is as much a dependency as an absolute one.
    pkg = tmp_path / "mrnet" / "inference"
    pkg.mkdir(parents=True)
    for f in ("mrnet/__init__.py", "mrnet/inference/__init__.py", "mrnet/inference/viewer.py"):
        (tmp_path / f).write_text("")
    (pkg / "cam.py").write_text("def f():\n    from . import viewer\n")
    monkeypatch.setitem(globals(), "PROJECT", tmp_path)
    assert import_closure(pkg / "cam.py") == {
        "mrnet/__init__.py", "mrnet/inference/__init__.py", "mrnet/inference/cam.py",
        "mrnet/inference/viewer.py"}


def test_viewer_and_kneemri_evaluation_need_no_training_loop() -> None:
    for stage in ("viewer", "kneemri_evaluate", "mura/dvc.yaml:viewer", "mura/dvc.yaml:evaluate"):
        closure = import_closure(entry_point(stages()[stage]))
        training = {f for f in closure
                    if f == "mrnet/core/trainer.py" or f.startswith("mrnet/training/")}
        assert not training, f"{stage} depends on training code: {sorted(training)}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_no_dep_is_listed_twice(name: str) -> None:
    deps = [d for d in stages()[name].get("do", stages()[name]).get("deps", [])
            if isinstance(d, str)]
    assert len(deps) == len(set(deps)), sorted({d for d in deps if deps.count(d) > 1})
