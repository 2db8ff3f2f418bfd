"""The package's floors (docs/ARCHITECTURE.md): imports run one way, with no circles and none hidden in functions.

Read from the source with ``ast``; nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "audiopg"

# folder -> floor; a module may import its own folder or a lower floor, never a higher one or a sideways one
FLOORS = {
    "core": 0,
    "audio": 1, "synth": 1,
    "model": 2,
    "train": 3, "eval": 3,
    "analysis": 4,
    "experiments": 5,
    "api": 6,
    "cli": 7,
}
ROOT_MODULES = {"audiopg", "audiopg.__main__"}  # the package's front door: may reach any floor


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported audiopg module, line, at module level) for every import in the file."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    top = set()
    for node in tree.body:
        top.add(node)
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` and the like still read at the top
            top.update(node.body)
    found = []
    known = modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from audiopg.x import y` depends on audiopg.x.y when y is a module, else on audiopg.x
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found += [(t, node.lineno, node in top) for t in dict.fromkeys(targets) if t.startswith("audiopg.")]
    return found  # the bare root (`from audiopg import __version__`) imports nothing eagerly, so it is no floor


def folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def test_every_folder_has_a_floor():
    for path in PACKAGE.iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            assert path.name in FLOORS, f"{path.name}/ has no floor in this test and in docs/ARCHITECTURE.md"


def test_imports_run_down_the_floors_only():
    bad = []
    for name, path in modules().items():
        if name in ROOT_MODULES:
            continue
        here = folder(name)
        assert here is not None, f"{name}: a module outside the floors"
        for target, line, _ in imports(path, name):
            there = folder(target)
            if there is None:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} (the package root)")
            elif there != here and FLOORS[there] >= FLOORS[here]:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} "
                           f"({there}/ is floor {FLOORS[there]}, {here}/ is floor {FLOORS[here]})")
    assert not bad, "imports that run up or sideways:\n" + "\n".join(bad)


def test_package_imports_sit_at_the_top_of_each_file():
    bad = [f"{path.relative_to(PACKAGE)}:{line} imports {target} inside a function or class"
           for name, path in modules().items() for target, line, top in imports(path, name) if not top]
    assert not bad, "\n".join(bad)


def test_no_circles():
    known = modules()
    graph = {name: sorted({t for t, _, _ in imports(path, name) if t in known and t != name})
             for name, path in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError("an import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
