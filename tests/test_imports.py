"""The package's import graph, lazy imports inside functions included: no cycle, every import
downward in the layers the README draws (LAYERS), printing only in the CLI and the demo, and the
demo's helpers in demo/."""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (``from X import name`` counts
    X.name when that is a module, else X)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names}
                names = {a.name for a in node.names if f"{node.module}.{a.name}" not in modules}
                targets |= (subs & modules.keys()) | ({node.module} if names else set())
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def test_the_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_config_is_at_the_bottom():
    assert import_graph()["vqa_grpo.config"] == {"vqa_grpo.errors", "vqa_grpo.config_scoring"}
    assert import_graph()["vqa_grpo.config_scoring"] == set()


LAYERS = (
    "vqa_grpo.errors",
    "vqa_grpo.config_scoring",
    "vqa_grpo.config",
    "vqa_grpo.config_keys",
    "vqa_grpo.paths",
    "vqa_grpo.distributed",
    "vqa_grpo.data",
    "vqa_grpo.rewards",
    "vqa_grpo.config_checks",
    "vqa_grpo.config_load",
    "vqa_grpo.models",
    "vqa_grpo.grpo",
    "vqa_grpo.evaluation",
    "vqa_grpo.training",
    "vqa_grpo.demo",
    "vqa_grpo.api",
    "vqa_grpo",
    "vqa_grpo.cli_parser",
    "vqa_grpo.cli",
)
"""The layers, bottom to top (README.md, "Layers"): a module imports from its own layer or one
below. A layer is a module or a package; a module belongs to the longest that names it, and "vqa_grpo"
is the package's __init__.py alone."""

PRINTING = ("vqa_grpo.cli", "vqa_grpo.cli_parser", "vqa_grpo.demo")
"""Where ``print`` may be called: the library returns what it found and the command prints it."""


def layer(module: str) -> int:
    """The position in LAYERS of the layer that holds ``module``."""
    if module == "vqa_grpo":
        return LAYERS.index("vqa_grpo")
    owners = [x for x in LAYERS if x != "vqa_grpo" and (module == x or module.startswith(x + "."))]
    return LAYERS.index(max(owners, key=len))


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every "importer -> imported" of ``graph`` that goes up the layers."""
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer(t) > layer(m))


def test_the_readme_draws_these_layers():
    text = (SRC.parent / "README.md").read_text()
    paragraph = text.split("Layers, bottom to top:")[1].split(". A module")[0]
    names = [n.rstrip("/") for n in re.findall(r"`([^`]+)`", paragraph)]
    assert ["vqa_grpo" if n == "__init__" else f"vqa_grpo.{n}" for n in names] == list(LAYERS)


def test_every_module_has_a_layer():
    assert {m: layer(m) for m in import_graph()}  # layer() fails on a module no layer names


def test_no_module_imports_a_higher_layer():
    assert upward(import_graph()) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"vqa_grpo.data.loader": {"vqa_grpo.training.loop"}, "vqa_grpo.grpo.dynamic": {"vqa_grpo.grpo.math"}}
    assert upward(graph) == ["vqa_grpo.data.loader -> vqa_grpo.training.loop"]
    assert layer("vqa_grpo.distributed.dist") < layer("vqa_grpo.grpo.rollout") < layer("vqa_grpo.training")


def printers() -> list[str]:
    """module:line of every ``print(...)`` call outside the CLI and the demo."""
    found = []
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        if any(module == x or module.startswith(x + ".") for x in PRINTING):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{module}:{node.lineno}")
    return sorted(found)


def test_only_the_cli_and_the_demo_print():
    assert printers() == []


def test_a_module_only_the_demo_imports_lives_in_demo():
    graph = import_graph()
    users: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for t in targets:
            users.setdefault(t, set()).add(module)
    demo_only = [
        t
        for t, us in users.items()
        if layer(t) != layer("vqa_grpo.demo") and all(u.startswith("vqa_grpo.demo") for u in us)
    ]
    assert demo_only == []


def test_help_loads_no_heavy_package():
    """``vqa-grpo --help`` answers without torch and the like: the CLI imports each command's
    modules in its branch, and the library keeps optional and slow packages inside functions."""
    code = (
        "import sys, contextlib, io\n"
        "from vqa_grpo.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'matplotlib', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out == "[]\n"
