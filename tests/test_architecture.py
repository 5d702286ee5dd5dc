"""The house draws as floors: every gridflex module imports only from its own floor or below, no
import cycle hides anywhere (lazy imports inside functions count), the core never imports the
built-in plugins, and modules stay small unless their docstring says why.

Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "gridflex"

#: Lowest floor first. A module may import from its own floor and the floors below it.
FLOORS: list[tuple[str, ...]] = [
    ("gridflex.errors", "gridflex.progress", "gridflex.shipped"),
    ("gridflex.network",),
    ("gridflex.fleet",),
    ("gridflex.plugins",),
    ("gridflex.scenario",),
    ("gridflex.learning",),
    ("gridflex.runs",),
    ("gridflex.report",),
    ("gridflex.tune",),
    ("gridflex.deploy",),
    ("gridflex.cli",),
    ("gridflex.testing",),
]
#: The facade: ``gridflex/__init__.py`` (version, plugin markers) and ``python -m gridflex``.
FACADE = ("gridflex", "gridflex.__main__")
MAX_LINES = 450
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def floor_of(name: str) -> int | None:
    for level, prefixes in enumerate(FLOORS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return level
    return None


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (typing only, never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str) -> set[str]:
    """Every gridflex / gridflex_plugins module ``name`` imports, at module level or in a function."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # ``from pkg import module`` imports the module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {m for m in found if m.split(".")[0] in ("gridflex", "gridflex_plugins")}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_every_module_has_a_floor():
    homeless = [n for n in MODULES if n not in FACADE and floor_of(n) is None]
    assert not homeless, f"modules outside every floor (add them to a subpackage or FLOORS): {homeless}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for name, targets in graph.items():
        if name in FACADE:
            continue
        for target in targets:
            if target.startswith("gridflex_plugins") or target in FACADE:
                continue
            if floor_of(target) > floor_of(name):
                upward.append(f"{name} (floor {floor_of(name)}) imports {target} (floor {floor_of(target)})")
    return sorted(upward)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_upward_imports():
    upward = upward_imports(GRAPH)
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_core_never_imports_the_builtin_plugins():
    offenders = sorted(f"{n} -> {t}" for n, ts in GRAPH.items() for t in ts if t.startswith("gridflex_plugins"))
    assert not offenders, "the core reaches plugins only through the registry:\n" + "\n".join(offenders)


def test_no_import_cycles():
    cycles = import_cycles(GRAPH)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_find_a_planted_cycle_and_upward_import():
    planted = dict(GRAPH)
    planted["gridflex.network.grid"] = GRAPH["gridflex.network.grid"] | {"gridflex.runs.world"}
    assert any("gridflex.network.grid" in c and "gridflex.runs.world" in c for c in import_cycles(planted))
    assert any(line.startswith("gridflex.network.grid ") for line in upward_imports(planted))


def test_few_top_level_modules():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{len(top)} top-level modules: {top}"


def test_modules_are_small_or_say_why():
    """A module over the limit states its reason in its docstring, in a paragraph starting
    ``Size:``."""
    long = []
    for name, path in MODULES.items():
        n_lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n_lines > MAX_LINES and "Size:" not in doc:
            long.append(f"{name}: {n_lines} lines")
    assert not long, f"modules over {MAX_LINES} lines without a 'Size:' reason: {long}"
