"""The package's layers: no import circle, and the few rules that keep it so (issue 13).

The import graph is read from the source by AST (no module is imported), counting every import, including those
inside functions: a lazy import is still a dependency. Layers, bottom up: ``errors``/``latents``/``registry``/``io``
-> ``models`` (``models.fileformat`` is the file format every model sits on) -> ``weights`` (which file a name means)
-> everything else -> ``commands`` -> ``cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fastdecoders"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module ``name`` lives in (``fastdecoders.models.TAEDecoder`` -> ``fastdecoders.models``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str, is_package: bool, mods: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(max(node.level - 1, 0)):
            base = base.rpartition(".")[0]
        source = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
        # ``from pkg import sub`` imports the submodule when there is one; else a name of ``pkg``
        names = [f"{source}.{alias.name}" for alias in node.names]
    else:
        return set()
    found = {_resolve(n, mods) for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}
    return {t for t in found if t is not None and t != module}


def _packages_run(target: str, module: str, mods: dict[str, Path]) -> set[str]:
    """The packages whose ``__init__`` importing ``target`` runs first (``a.b`` for ``a.b.c``), except those
    ``module`` is already inside (they are running already) and the root package."""
    parts = target.split(".")
    parents = {".".join(parts[:i]) for i in range(2, len(parts))}
    return {p for p in parents if p in mods and p != module and not module.startswith(p + ".")}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source, with the package ``__init__``s that
    importing them runs (a hidden edge: ``weights`` importing ``switching.file`` runs ``switching/__init__``)."""
    mods = _modules()
    graph = {}
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set().union(*(_targets(n, module, path.name == "__init__.py", mods) for n in ast.walk(tree)))
        graph[module] = targets.union(*(_packages_run(t, module, mods) for t in targets))
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of size > 1 (iterative: no recursion limit)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(component)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def _short(names) -> list[str]:
    return sorted(n.removeprefix(PACKAGE + ".") for n in names)


def test_the_graph_is_read(graph):
    # guards against a reader that silently finds nothing: these edges exist by construction
    assert "fastdecoders.registry" in graph["fastdecoders.models.tae"]
    assert "fastdecoders.models.fileformat" in graph["fastdecoders.weights"]
    assert "fastdecoders.models.base" in graph["fastdecoders.models.tae"]


def test_no_import_circle(graph):
    circles = strongly_connected(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(_short(c)) for c in circles)


def _imports_outside(graph, module: str, allowed: set[str]) -> list[str]:
    return _short(t for t in graph[module] if t not in allowed)


def test_the_bottom_layer_imports_nothing_above_it(graph):
    bottom = {f"{PACKAGE}.{m}" for m in ("errors", "latents", "registry", "io")}
    for module in sorted(bottom):
        outside = _imports_outside(graph, module, bottom)
        assert not outside, f"{module} imports {outside}"
    # the registry is a leaf: it names decoders, it never builds or loads one
    assert graph[f"{PACKAGE}.registry"] <= {f"{PACKAGE}.errors", f"{PACKAGE}.latents"}
    assert graph[f"{PACKAGE}.io"] <= {f"{PACKAGE}.errors"}


def test_models_import_nothing_above_models(graph):
    below = {f"{PACKAGE}.{m}" for m in ("errors", "latents", "registry", "io")}
    for module in sorted(m for m in graph if m == f"{PACKAGE}.models" or m.startswith(f"{PACKAGE}.models.")):
        above = [t for t in graph[module] if t not in below and not t.startswith(f"{PACKAGE}.models")]
        assert not above, f"{module} imports {_short(above)}, which sit above the models"


def test_the_file_format_sits_below_every_model(graph):
    fileformat = f"{PACKAGE}.models.fileformat"
    assert graph[fileformat] <= {f"{PACKAGE}.errors", f"{PACKAGE}.io"}
    assert fileformat in graph[f"{PACKAGE}.models.base"]


def test_weights_sits_right_above_the_models(graph):
    # which file a name means is below every feature (train, eval, switching ...), which all load through it; the one
    # exception is reading a switch file (switching.file), which imports nothing that leads back here
    allowed = {f"{PACKAGE}.{m}" for m in ("errors", "latents", "registry", "io", "switching", "switching.file")}
    above = [t for t in graph[f"{PACKAGE}.weights"] if t not in allowed and not t.startswith(f"{PACKAGE}.models")]
    assert not above, f"weights imports {_short(above)}"


def test_only_the_cli_imports_the_commands(graph):
    commands = f"{PACKAGE}.commands"
    for module, targets in sorted(graph.items()):
        if module == commands or module.startswith(commands + "."):
            continue
        if module == f"{PACKAGE}.cli":  # VERBS
            continue
        used = [t for t in targets if t == commands or t.startswith(commands + ".")]
        assert not used, f"{module} imports {_short(used)}: library code must not depend on the CLI"
