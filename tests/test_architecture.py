"""The package's shape: the folder tree is the workflow, and imports only point backwards.

``rsgrpo/`` holds the core (cli, grid, layout, io, plotting, estimators, specs, capacity) and one subpackage per
workflow stage. A stage may import the core, itself, and the stages before it, never a later one;
``bandit`` (the paper's Fig. 3, independent of LLMs) and ``grading`` use the core only. Every import
counts, the ones inside functions too, and no module may take part in an import circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rsgrpo"
CORE = "core"
# A stage may import stages of a lower rank; two stages of one rank do not import each other.
RANK = {CORE: 0, "grading": 1, "bandit": 1, "prepare": 2, "train": 3, "evaluate": 4, "analysis": 5, "plan": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else CORE


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the rsgrpo modules it imports anywhere in its body (``from a import b`` counts as
    ``a.b`` when ``a.b`` is a module)."""
    modules = {module_name(p): p for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split(".")[0] == "rsgrpo")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "rsgrpo":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def backward_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(graph.items()):
        s = stage_of(source)
        for target in sorted(targets):
            t = stage_of(target)
            if t != s and not RANK[t] < RANK[s]:
                bad.append(f"{source} (stage {s}) imports {target} (stage {t})")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_known_stage():
    graph = import_graph()
    assert {stage_of(m) for m in graph} == set(RANK)
    assert stage_of("rsgrpo.grid") == CORE and stage_of("rsgrpo.train.trainer") == "train"
    assert stage_of("rsgrpo.train") == "train" and stage_of("rsgrpo") == CORE
    assert stage_of("rsgrpo.capacity") == CORE  # the plan's arithmetic, which the trainer calls too


def test_stages_import_only_earlier_stages_and_the_core():
    assert backward_violations(import_graph()) == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_checks_see_a_backward_import_and_a_circle():
    """The checks are not vacuous: the real graph plus one bad edge fails them."""
    graph = import_graph()
    assert "rsgrpo.prepare.prompts" in graph and "rsgrpo.train.trainer" in graph
    bad = {**graph, "rsgrpo.prepare.prompts": graph["rsgrpo.prepare.prompts"] | {"rsgrpo.train.trainer"}}
    assert backward_violations(bad) == ["rsgrpo.prepare.prompts (stage prepare) imports rsgrpo.train.trainer "
                                        "(stage train)"]
    assert any("rsgrpo.prepare.prompts" in c for c in circles(bad))  # trainer -> training_set -> prompts
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("stage", sorted(set(RANK) - {CORE}))
def test_each_stage_is_a_subpackage(stage):
    assert (PACKAGE / stage / "__init__.py").is_file()
