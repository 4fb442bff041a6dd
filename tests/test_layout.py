"""One dependency direction inside ``src/cira_db`` (the project rules' layout).

From the bottom up:

0. errors and models: the exceptions, the dataclasses, the version, data folders;
1. settings and SQL loading: settings, the connection plan, credentials, input
   validation, cursors, the SQL loader, the error seam and retries;
2. the database: `Database` and `AsyncDatabase`;
3. repositories and migrations (and ``cira_db.aio``, the asyncio repositories' facade);
4. adapters: the CLI, AWS, the pytest plugin, and the tools built on them
   (doctor, demo, seeder), plus the package's own facade ``cira_db``.

A module may import modules of its own layer or of layers below it, never above,
and no module imports itself through others: there is no import circle, inside a
layer either (`find_circles`). Every import counts: module level, inside functions
(lazy imports, a module ``__getattr__``) and under ``TYPE_CHECKING``. A module that
is in no layer fails the test with its name, so a new module is placed on purpose,
not by default.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cira_db"

LAYER_NAMES = (
    "errors and models",
    "settings and SQL loading",
    "the database",
    "repositories and migrations",
    "CLI, AWS and testing adapters",
)

# A name covers the module and, for a package, everything inside it.
LAYERS: dict[str, int] = {
    # 0: errors and models
    "cira_db.errors": 0,
    "cira_db._models": 0,
    "cira_db._version": 0,
    "cira_db.certs": 0,
    "cira_db.sql": 0,
    # 1: settings and SQL loading (and the values they check)
    "cira_db._settings": 1,
    "cira_db._settings_base": 1,
    "cira_db._settings_model": 1,
    "cira_db._plan": 1,
    "cira_db._aws_auth": 1,
    "cira_db._embedded": 1,
    "cira_db._sql": 1,
    "cira_db._validation": 1,
    "cira_db._cursor": 1,
    "cira_db._errors_map": 1,
    "cira_db._retry": 1,
    "cira_db._observe": 1,
    # 2: the database (sync, and its asyncio twin)
    "cira_db._database": 2,
    "cira_db._aio_database": 2,
    # 3: repositories and migrations
    "cira_db._repositories": 3,
    "cira_db.migrations": 3,
    "cira_db._migrations": 3,
    "cira_db.aio": 3,
    # 4: adapters
    "cira_db": 4,
    "cira_db.__main__": 4,
    "cira_db._cli": 4,
    "cira_db._doctor": 4,
    "cira_db._demo": 4,
    "cira_db._seed": 4,
    "cira_db.aws": 4,
    "cira_db.testing": 4,
}


def module_name(path: Path, root: Path) -> str:
    """``src/cira_db/_repositories/_jobs.py`` -> ``cira_db._repositories._jobs``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of ``module``: its own entry, or that of the nearest package listed."""
    name = module
    while name:
        if name in LAYERS and (name != PACKAGE or module == PACKAGE):
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(path: Path, root: Path) -> set[str]:
    """The cira_db modules ``path`` imports anywhere in its body."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    known = {module_name(p, root) for p in (root / PACKAGE).rglob("*.py")}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            # `from cira_db import errors` imports the submodule cira_db.errors.
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def check_layout(root: Path) -> list[str]:
    """Every breach of the layering under ``root/cira_db``, as readable sentences."""
    problems: list[str] = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(path, root)
        mine = layer_of(module)
        if mine is None:
            problems.append(
                f"put module {module} in a layer (tests/test_layout.py LAYERS: "
                + ", ".join(f"{n} {name}" for n, name in enumerate(LAYER_NAMES))
                + ")"
            )
            continue
        for target in sorted(imports_of(path, root)):
            if target == PACKAGE and module != PACKAGE:
                # `from cira_db import X` with X not a module: the facade, from below.
                problems.append(f"{module} imports the package facade {PACKAGE}; import X directly")
                continue
            theirs = layer_of(target)
            if theirs is None:
                problems.append(f"put module {target} in a layer (imported by {module})")
            elif theirs > mine:
                problems.append(
                    f"{module} ({LAYER_NAMES[mine]}) imports {target} ({LAYER_NAMES[theirs]})"
                )
    return problems


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every cira_db module under ``root`` and the cira_db modules it imports (anywhere)."""
    return {
        module_name(path, root): imports_of(path, root)
        for path in sorted((root / PACKAGE).rglob("*.py"))
    }


def find_circles(root: Path) -> list[str]:
    """Every import circle among the modules under ``root/cira_db``, one sentence each.

    A circle is a group of modules that reach each other through imports (a strongly
    connected component of the import graph, found with Tarjan's algorithm); it is
    reported as one path round it, from its first module by name.
    """
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1 or module in graph[module]:
                groups.append(group)

    for module in graph:
        if module not in index:
            visit(module)
    return sorted(f"import circle: {' -> '.join(_path_round(graph, group))}" for group in groups)


def _path_round(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    for module in queue:
        for target in sorted(graph[module] & group):
            if target == start:
                return [*paths[module], start]
            if target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    raise AssertionError("a strongly connected group always has a path round it")


def test_imports_follow_one_direction() -> None:
    assert check_layout(SRC) == []


def test_no_module_imports_itself_through_others() -> None:
    assert find_circles(SRC) == []


def test_every_layer_is_in_use() -> None:
    modules = [module_name(p, SRC) for p in (SRC / PACKAGE).rglob("*.py")]
    used = {layer_of(module) for module in modules}
    assert used == set(range(len(LAYER_NAMES)))


# -- the check itself, on a copy of the package ----------------------------------------------------


@pytest.fixture
def copy_of_src(tmp_path: Path) -> Path:
    shutil.copytree(SRC / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_the_database_importing_a_repository_fails(copy_of_src: Path) -> None:
    _append(
        copy_of_src / PACKAGE / "_database.py",
        "\n\ndef _late() -> None:\n    from cira_db._repositories import JobRepository  # noqa\n",
    )
    assert check_layout(copy_of_src) == [
        "cira_db._database (the database) imports cira_db._repositories "
        "(repositories and migrations)"
    ]


def test_a_relative_import_upwards_fails(copy_of_src: Path) -> None:
    _append(copy_of_src / PACKAGE / "errors.py", "\nfrom . import _settings  # noqa\n")
    assert check_layout(copy_of_src) == [
        "cira_db.errors (errors and models) imports cira_db._settings (settings and SQL loading)"
    ]


def test_a_module_in_no_layer_is_named(copy_of_src: Path) -> None:
    (copy_of_src / PACKAGE / "_brand_new.py").write_text("X = 1\n", encoding="utf-8")
    problems = check_layout(copy_of_src)
    assert len(problems) == 1
    assert problems[0].startswith("put module cira_db._brand_new in a layer")


def test_importing_the_facade_from_inside_fails(copy_of_src: Path) -> None:
    _append(copy_of_src / PACKAGE / "_sql.py", "\nfrom cira_db import Database  # noqa\n")
    assert check_layout(copy_of_src) == [
        "cira_db._sql imports the package facade cira_db; import X directly"
    ]


def test_a_lazy_import_closing_a_circle_fails(copy_of_src: Path) -> None:
    # Same layer, so only the circle check sees it.
    _append(
        copy_of_src / PACKAGE / "_plan.py",
        "\n\ndef _late() -> None:\n    from cira_db._settings_base import FIELDS  # noqa\n",
    )
    assert check_layout(copy_of_src) == []
    assert find_circles(copy_of_src) == [
        "import circle: cira_db._plan -> cira_db._settings_base -> cira_db._plan"
    ]


def test_a_type_checking_import_closing_a_circle_fails(copy_of_src: Path) -> None:
    _append(
        copy_of_src / PACKAGE / "_repositories" / "_heartbeat.py",
        "\nif TYPE_CHECKING:\n    from cira_db._repositories._jobs import JobRepository  # noqa\n",
    )
    assert find_circles(copy_of_src) == [
        "import circle: cira_db._repositories._heartbeat -> cira_db._repositories._jobs"
        " -> cira_db._repositories._heartbeat"
    ]


def test_a_module_getattr_closing_a_circle_fails(copy_of_src: Path) -> None:
    _append(
        copy_of_src / PACKAGE / "_settings_model.py",
        "\n\ndef __getattr__(name: str) -> object:\n"
        "    from cira_db import _settings\n\n    return getattr(_settings, name)\n",
    )
    assert find_circles(copy_of_src) == [
        "import circle: cira_db._settings -> cira_db._settings_model -> cira_db._settings"
    ]


def test_a_circle_of_three_is_named_in_order(copy_of_src: Path) -> None:
    _append(copy_of_src / PACKAGE / "_plan.py", "\nfrom cira_db import _settings  # noqa\n")
    assert find_circles(copy_of_src) == [
        "import circle: cira_db._plan -> cira_db._settings -> cira_db._settings_base"
        " -> cira_db._plan"
    ]
