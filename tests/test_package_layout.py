"""The dynunc package's floors and wings (dynunc/__init__.py): the floor modules import no
wing, `training` imports neither `scoring` nor `report`, `scoring` does not import
`report`, `integrations` import `training` only, and no module imports itself back
through others (no cycle)."""
import ast
import os
from typing import Dict, Set

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dynunc")
WINGS = ("training", "scoring", "report", "integrations")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def dynunc_imports() -> Dict[str, Set[str]]:
    """Every dynunc module -> the dynunc modules it imports (at any depth of the file)."""
    graph = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            found = set()
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dynunc"):
                    for alias in node.names:
                        candidate = f"{node.module}.{alias.name}"
                        found.add(candidate if os.path.exists(os.path.join(
                            os.path.dirname(ROOT), *candidate.split(".")) + ".py") else node.module)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith("dynunc"))
            graph[module_name(path)] = found
    return graph


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else "floor"


def test_wings_import_only_the_floor_and_scoring_below_report():
    allowed = {"floor": {"floor"}, "training": {"floor", "training"}, "scoring": {"floor", "scoring"},
               "report": {"floor", "scoring", "report"}, "integrations": {"floor", "training", "integrations"}}
    graph = dynunc_imports()
    assert len(graph) > 20
    wrong = [(m, i) for m, imports in graph.items() for i in imports
             if m != "dynunc" and i != "dynunc" and wing(i) not in allowed[wing(m)]]
    assert wrong == []


def test_no_import_cycle():
    graph = dynunc_imports()
    state: Dict[str, int] = {}

    def visit(module, stack):
        state[module] = 1
        for nxt in graph.get(module, ()):
            if nxt == "dynunc" or nxt == module:
                continue
            assert state.get(nxt) != 1, " -> ".join(stack + [module, nxt])
            if nxt not in state:
                visit(nxt, stack + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
