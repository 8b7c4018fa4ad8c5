"""The packages import one way: utils -> datasets -> models -> evaluation -> training (engine) | serving (inference)
-> the command-line scripts, with no import from a package into one at its own level or below and no cycle between
modules; and the checks themselves catch a planted upward import and a planted cycle."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "datasets", "models", "evaluation", "inference")
SCRIPTS = ("train", "eval", "predict", "app")
LEVELS = {"utils": 0, "datasets": 1, "models": 2, "evaluation": 3, "engine": 4, "inference": 4,
          **{script: 5 for script in SCRIPTS}}


def imports_of(source, package):
    """The project modules a module's source imports (top-level package.module names); package: the module's own,
    for relative imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in LEVELS}


def project_graph():
    """{module name: (file, the project modules it imports)} for the packages, engine.py and the scripts."""
    files = {name: ROOT / f"{name}.py" for name in ("engine", *SCRIPTS)}
    for package in PACKAGES:
        for path in (ROOT / package).glob("*.py"):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return {name: (path, imports_of(path.read_text(), name if path.stem == "__init__" else name.rpartition(".")[0]))
            for name, path in files.items()}


def upward_imports(graph):
    """'file imports module' for each import into a package at the importer's level or below (its own excepted)."""
    wrong = []
    for name, (path, imported) in graph.items():
        top = name.split(".")[0]
        for module in imported:
            other = module.split(".")[0]
            if other != top and LEVELS[other] >= LEVELS[top]:
                wrong.append(f"{path.name if path.parent == ROOT else path.relative_to(ROOT)} imports {module}")
    return sorted(wrong)


def find_cycle(graph):
    """The first import cycle between modules as a list of names, or None. A package's __init__ re-exports its own
    modules, which is not a cycle."""
    edges = {name: {m for m in imported if m in graph and m != name} for name, (_, imported) in graph.items()}
    for package in PACKAGES:
        edges[package] = set()
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, trail + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_no_import_from_a_lower_package_into_a_higher_one():
    assert not upward_imports(project_graph()), "\n".join(upward_imports(project_graph()))


def test_no_import_cycle_between_modules():
    cycle = find_cycle(project_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_utils_imports_nothing_of_the_project_outside_utils():
    outside = {f"{name} imports {module}" for name, (_, imported) in project_graph().items()
               if name.startswith("utils") for module in imported if not module.startswith("utils")}
    assert not outside, sorted(outside)


@pytest.mark.parametrize("planted, module, source", [
    ("utils.planted", "utils.planted", "from models import build_model\n"),
    ("datasets.planted", "datasets.planted", "from evaluation.box_metrics import summarize\n"),
    ("evaluation.planted", "evaluation.planted", "from engine import evaluate\n"),
    ("engine", "engine", "from inference import SegVGPredictor\n"),
    ("inference.planted", "inference.planted", "import train\n"),
])
def test_the_order_check_catches_a_planted_upward_import(planted, module, source):
    graph = project_graph()
    graph[planted] = (ROOT / f"{module.replace('.', '/')}.py", imports_of(source, module.rpartition(".")[0]))
    assert any(line.startswith(f"{module.replace('.', '/')}.py imports") for line in upward_imports(graph))


def test_the_cycle_check_catches_a_planted_cycle():
    graph = project_graph()
    path, imported = graph["evaluation.segmentation_map"]
    # mask_metrics imports segmentation_map today; segmentation_map importing mask_metrics closes a loop.
    graph["evaluation.segmentation_map"] = (path, imported | imports_of("from .mask_metrics import MAPS\n",
                                                                        "evaluation"))
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and {"evaluation.mask_metrics", "evaluation.segmentation_map"} <= set(cycle)
