"""The package's shape: no import cycles, the device-side modules import without torch, and every
target's declared extra exists in pyproject.toml with the distributions the target needs."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import edgeexport
from edgeexport.exporter import Exporter, get_exporter, targets
from edgeexport.runner import runtime_module, runtimes

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(edgeexport.__file__).parent


# --------------------------------------------------------------------------- import cycles


def _modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every module of the package at ``root``."""
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """``(module, name)`` of every import statement, at any depth (function bodies included), except
    under ``if TYPE_CHECKING:``, which never runs. ``name`` is what ``from module import name`` takes."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module, up level - 1
                anchor = module.split(".")[:None if is_package else -1]
                base = ".".join([*anchor[:len(anchor) - node.level + 1], *([base] if base else [])])
            yield from ((base, alias.name) for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports: ``from a import b`` imports the module ``a.b`` if
    there is one, else ``a``."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges = set()
        for base, name in _imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            target = f"{base}.{name}" if name and f"{base}.{name}" in modules else base
            if target in modules and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or ``[]`` when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return [*path[path.index(imported):], imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def test_edgeexport_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "edgeexport.reference" in graph["edgeexport.pipeline"]  # imported inside a function
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    """The planted failure: two modules that import each other, one of them inside a function, and a
    type-only import that must not count."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import a\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
                                  "from pkg import sub\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.c"] == {"pkg.sub"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\n"
                                          "if TYPE_CHECKING:\n    from pkg import a\n")
    assert find_cycle(import_graph(package)) == []


def layout_section(readme: str) -> str:
    """README's Layout section: from its heading to the next ``## `` heading."""
    return readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]


def unnamed_modules(root: Path, layout: str) -> list[str]:
    """The package's modules (``name.py``) and subpackages (``name/``) that the Layout section does not name."""
    names = [f"{path.name}/" for path in sorted(root.iterdir()) if (path / "__init__.py").is_file()]
    names += [path.name for path in sorted(root.glob("*.py")) if path.name not in ("__init__.py", "__main__.py")]
    return [name for name in names if not re.search(rf"(?<![\w/]){re.escape(name)}(?!\w)", layout)]


def test_readme_layout_names_every_module(tmp_path: Path) -> None:
    layout = layout_section((ROOT / "README.md").read_text())
    assert unnamed_modules(PACKAGE, layout) == []
    # The planted failure: a module and a subpackage the map does not show.
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/named.py", "pkg/hidden.py", "pkg/__main__.py"):
        (tmp_path / name).write_text("")
    assert unnamed_modules(tmp_path / "pkg", "  named.py   shown\n  unhidden.py\n") == ["sub/", "hidden.py"]


# --------------------------------------------------------------------------- device side without torch

DEVICE_MODULES = [
    "edgeexport.artifact", "edgeexport.bundle", "edgeexport.errors", "edgeexport.logs", "edgeexport.interrupts",
    "edgeexport.generation_spec", "edgeexport.processing", "edgeexport.zoo", "edgeexport.tasks",
    "edgeexport.generator", "edgeexport.decoding", "edgeexport.validation.metrics", "edgeexport.validation.parity",
    "edgeexport.validation.latency", "edgeexport.validation.report", "edgeexport.reporting", "edgeexport.cli",
    "edgeexport.pipeline", "edgeexport.conversion", "edgeexport.onnxtools.capture", "edgeexport.onnxtools.passes",
    "edgeexport.inspection", "edgeexport.runner", "edgeexport.exporter",
    *(f"edgeexport.runtimes.{name}" for name in runtimes()), *(f"edgeexport.exporters.{name}" for name in targets()),
]
BLOCKED = ("torch", "transformers")


def test_device_side_modules_import_without_torch() -> None:
    """Each module in a fresh interpreter where importing torch or transformers fails, as on a device."""
    script = ("import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED) +
              "import importlib\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
              f"print(sorted(n for n in {BLOCKED!r} if sys.modules.get(n) is not None))")
    result = subprocess.run([sys.executable, "-c", script, *DEVICE_MODULES], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # The planted failure: the reference package needs torch, and the same check says so.
    failing = subprocess.run([sys.executable, "-c", script, "edgeexport.reference"], capture_output=True, text=True,
                             timeout=300)
    assert failing.returncode != 0 and "ModuleNotFoundError" in failing.stderr


# --------------------------------------------------------------------------- packaging


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _distributions(requirements: list[str], extras: Mapping[str, list[str]]) -> set[str]:
    """Distribution names of ``requirements``, following ``edgeexport[...]`` references into ``extras``."""
    names = set()
    for line in requirements:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == "edgeexport":
            for extra in requirement.extras:
                names |= _distributions(extras[extra], extras)
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def missing_from_extras(exporter: Exporter, project: Mapping[str, Any]) -> list[str]:
    """What is wrong with an exporter's ``extra``: extras pyproject lacks, and required packages that
    neither the base dependencies nor those extras install."""
    extras = project["optional-dependencies"]
    named = [extra for extra in exporter.extra.split(",") if extra]
    problems = [f"no extra {extra!r}" for extra in named if extra not in extras]
    installed = _distributions(project["dependencies"], extras) | _distributions(
        [f"edgeexport[{extra}]" for extra in named if extra in extras], extras)
    providers = importlib.metadata.packages_distributions()
    for name in exporter.requires:
        distribution = canonicalize_name(providers[name][0])
        if distribution not in installed:
            problems.append(f"{name} (distribution {distribution}) is not installed by the base or {named}")
    return problems


@pytest.mark.parametrize("target", targets())
def test_every_exporter_extra_installs_what_it_requires(target: str) -> None:
    exporter = get_exporter(target)
    assert exporter.extra and exporter.install == f"pip install 'edgeexport[{exporter.extra}]'"
    assert missing_from_extras(exporter, _pyproject()) == []


def test_a_wrong_extra_is_caught() -> None:
    """The planted failures: an extra pyproject lacks, and one that does not install a requirement."""
    project = _pyproject()
    openvino = get_exporter("openvino")
    assert missing_from_extras(type("Typo", (type(openvino),), {"extra": "export,openvin"})(), project) == [
        "no extra 'openvin'", "openvino (distribution openvino) is not installed by the base or "
        "['export', 'openvin']", "nncf (distribution nncf) is not installed by the base or ['export', 'openvin']"]
    short = {**project, "optional-dependencies": {**project["optional-dependencies"], "export": ["torch"]}}
    assert missing_from_extras(get_exporter("onnx"), short) == [
        "transformers (distribution transformers) is not installed by the base or ['export']",
        "onnxscript (distribution onnxscript) is not installed by the base or ['export']",
        "onnxslim (distribution onnxslim) is not installed by the base or ['export']"]


def test_the_device_install_runs_every_builtin_runtime_but_tensorrt_engines() -> None:
    """The base dependencies are the device install: no torch, and each runtime's install hint names
    the bare packages it needs, not an edgeexport extra that pulls torch."""
    project = _pyproject()
    base = _distributions(project["dependencies"], project["optional-dependencies"])
    assert not base & {"torch", "transformers", "safetensors", "onnxscript", "onnxslim", "nncf"}
    providers = importlib.metadata.packages_distributions()
    for name in runtimes():
        runner = runtime_module(name).RUNNER
        assert "edgeexport" not in runner.install, runner.install
        for package in runner.requires:
            distribution = canonicalize_name(providers[package][0])
            assert distribution in base or distribution in runner.install.split(), (name, distribution)
