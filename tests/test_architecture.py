"""The layering rules of docs/architecture.md, checked on the source: which package may import
which, which modules stay torch-free, and no import cycle (function-level imports count; imports
under `if TYPE_CHECKING:` do not, since they never run)."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import layerwise

PACKAGE = Path(layerwise.__file__).parent

LAYERS: list[set[str]] = [
    {"util"},
    {"profiles"},
    {"config"},
    {"runs", "data", "nn"},
    {"distributed"},
    {"training"},
    {"evaluation", "hf"},
    {"launch"},
    {"compare"},
    {"analysis", "search", "ladder", "learn"},
    {"cli"},
    {"__main__"},
]
"""A package may import only packages of lower layers (and the root `layerwise`, which
imports nothing at run time)."""

TORCH_FREE_PACKAGES = {"util", "profiles", "config", "runs"}
TORCH_FREE_MODULES = {
    "layerwise",
    "layerwise.cli",
    "layerwise.cli.profile",
    "layerwise.cli.runs",
    "layerwise.cli.plot",
    "layerwise.cli.data",
    "layerwise.data.checks",
    "layerwise.data.inputs",
    "layerwise.data.meta",
    "layerwise.data.prepare",
    "layerwise.data.readers",
    "layerwise.data.token_import",
    "layerwise.data.tokenizer",
    "layerwise.compare.cells",
    "layerwise.compare.results",
    "layerwise.compare.report",
    "layerwise.compare.figures",
    "layerwise.evaluation.formats",
    "layerwise.evaluation.requests",
    "layerwise.evaluation.tasks",
    "layerwise.evaluation.metrics",
    "layerwise.evaluation.report",
    "layerwise.search.space",
    "layerwise.learn",
    "layerwise.learn.budget",
    "layerwise.ladder",
    "layerwise.ladder.table",
    "layerwise.ladder.law",
    "layerwise.ladder.bootstrap",
    "layerwise.ladder.checks",
    "layerwise.ladder.answer",
    "layerwise.ladder.fit",
    "layerwise.ladder.synthetic",
    "layerwise.ladder.figures",
    "layerwise.ladder.report",
    "layerwise.training.shape",
}
"""Besides the torch-free packages: what `layerwise --help`, `profile`, `runs`, `report` and
`data prepare` import, so they start fast and the data pipeline's workers stay light."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST) -> list[str]:
    """Every module name imported anywhere in `tree`, outside `if TYPE_CHECKING:` blocks."""
    names: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                names += imported(child)
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        names += imported(node)
    return names


def parents(module: str) -> set[str]:
    """The packages Python imports before `module` (their `__init__`s run first)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@cache
def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(modules of layerwise, top-level names of other distributions) that `module` imports."""
    names = imported(ast.parse(modules()[module].read_text(encoding="utf-8")))
    ours = {name for name in names if name in modules() and name != module}
    others = {name.split(".")[0] for name in names if not name.startswith("layerwise")}
    return ours, others


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def layer_of(package: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def reachable(module: str, with_parents: bool = False) -> set[str]:
    """What importing `module` runs; with its parent packages' `__init__`s if asked (for what
    is loaded, not for cycles: a package re-exporting its submodules is no cycle)."""
    seen, todo = {module}, [module]
    while todo:
        current = todo.pop()
        found = imports_of(current)[0] | (parents(current) if with_parents else set())
        for dependency in found:
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module) for module in modules()} - {"(root)"}
    assert packages == set().union(*LAYERS)


def test_packages_import_only_lower_layers() -> None:
    wrong = []
    for module in modules():
        source = package_of(module)
        for dependency in imports_of(module)[0]:
            target = package_of(dependency)
            if source == "(root)" or target in ("(root)", source):
                continue
            if layer_of(target) >= layer_of(source):
                wrong.append(f"{module} imports {dependency}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_root_package_imports_nothing_of_its_own_at_run_time() -> None:
    assert imports_of("layerwise")[0] == set()


def test_there_is_no_import_cycle() -> None:
    cycles = [
        module
        for module in modules()
        if any(module in reachable(dependency) for dependency in imports_of(module)[0])
    ]
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def torch_free() -> list[str]:
    return sorted(
        module
        for module in modules()
        if package_of(module) in TORCH_FREE_PACKAGES or module in TORCH_FREE_MODULES
    )


def test_torch_free_modules_reach_no_torch_import() -> None:
    heavy = {"torch", "safetensors", "transformers", "optuna"}
    wrong = {
        module: sorted(
            dep for dep in reachable(module, with_parents=True) if imports_of(dep)[1] & heavy
        )
        for module in torch_free()
    }
    assert not {module: deps for module, deps in wrong.items() if deps}


def test_torch_free_modules_import_without_torch_in_a_fresh_process() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {torch_free()!r}: importlib.import_module(name)\n"
        "loaded = sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
