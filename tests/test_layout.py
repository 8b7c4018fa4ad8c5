"""The packages import one way: datasets -> models -> utils -> engine (training) and inference (serving), with no
import from a lower package into a higher one and no cycle between modules."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {"datasets": 0, "models": 1, "utils": 2, "engine": 3, "inference": 3}


def imports_of(path):
    """The project modules a file imports (top-level package.module names)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in LEVELS}


def module_files():
    files = {"engine": ROOT / "engine.py"}
    for package in ("datasets", "models", "utils", "inference"):
        for path in (ROOT / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            files[name] = path
    return files


def test_no_import_from_a_lower_package_into_a_higher_one():
    wrong = []
    for name, path in module_files().items():
        level, top = LEVELS[name.split(".")[0]], name.split(".")[0]
        for imported in imports_of(path):
            other = imported.split(".")[0]
            if other != top and LEVELS[other] >= level:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    files = module_files()
    graph = {name: {i for i in imports_of(path) if i in files and i != name} for name, path in files.items()}
    for package in ("datasets", "models", "utils", "inference"):  # a package's __init__ re-exports, not a cycle
        graph[package] = set()
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
