"""The structure's rules, read from the code's own imports (ast, nothing run).

    .venv/bin/python tests/test_architecture.py    # prints the import graph between the
                                                    # places, the largest modules and the
                                                    # longest functions
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("server", "handlers", "workers", "settings.py")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in SOURCES:
        path = ROOT / top
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for f in files:
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports (absolute names), relative imports resolved."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {i for i in imports_of(path, name) if i in mods} for name, path in mods.items()}


def place(module: str) -> str:
    """The place a module belongs to: handlers, workers, settings, or server's
    subpackage (``python -m server`` is the composition root's; the lifecycle
    helpers are a place of their own, beneath everything)."""
    if module == "server.__main__":
        return "server.composition"
    parts = module.split(".")
    if parts[0] != "server" or len(parts) == 1:
        return parts[0]
    return ".".join(parts[:2]) if (ROOT / "server" / parts[1]).is_dir() else module


def place_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for src, targets in graph().items():
        for dst in targets:
            if place(src) != place(dst):
                edges[place(src)].add(place(dst))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def importers(prefix: str) -> set[str]:
    return {src for src, targets in graph().items()
            if any(t == prefix or t.startswith(prefix + ".") for t in targets)}


def third_party_imports(prefix: str) -> dict[str, set[str]]:
    mods = modules()
    return {name: {i.split(".")[0] for i in imports_of(path, name)}
            for name, path in mods.items() if name.startswith(prefix)}


# -- the rules -----------------------------------------------------------------

def test_only_the_composition_root_imports_handlers_and_workers() -> None:
    for layer in ("handlers", "workers"):
        outside = {m for m in importers(layer) if place(m) not in (layer, "server.composition")}
        assert not outside, f"{layer}/ imported from outside the composition root: {sorted(outside)}"


def test_nothing_imports_the_composition_root() -> None:
    outside = {m for m in importers("server.composition") if place(m) != "server.composition"}
    assert not outside, sorted(outside)


def test_places_import_each_other_one_way() -> None:
    assert cycles(place_graph()) == []


def test_modules_import_each_other_one_way() -> None:
    assert cycles(graph()) == []


def test_the_domain_knows_no_http_and_no_wechat_version() -> None:
    for module, names in third_party_imports("server.domain").items():
        assert not names & {"tornado", "aiohttp", "handlers", "workers"}, (module, names)
    versioned = {m for m in graph() if place(m) == "server.domain"
                 and any(t.startswith("server.gateway.wxpay_") for t in graph()[m])}
    assert not versioned, f"the domain names a WeChat Pay version: {sorted(versioned)}"


def test_the_gateway_knows_nothing_of_orders() -> None:
    leaks = {m for m in graph() if place(m) == "server.gateway"
             and any(place(t) in ("server.domain", "server.push", "handlers", "workers") for t in graph()[m])}
    assert not leaks, sorted(leaks)


# -- the picture in words ------------------------------------------------------

def longest_functions(count: int) -> list[tuple[int, str]]:
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))  # type: ignore[operator]
    return sorted(found, reverse=True)[:count]


def main() -> None:
    edges = place_graph()
    print("places and what they import:")
    for src in sorted(set(edges) | {place(m) for m in modules()}):
        print(f"  {src:22} -> {', '.join(sorted(edges.get(src, ()))) or '-'}")
    print("import loops between places:", cycles(edges) or "none")
    print("import loops between modules:", cycles(graph()) or "none")
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in modules().items()), reverse=True)[:5]
    print("largest modules:", ", ".join(f"{n} {lines}" for lines, n in sizes))
    print("longest functions:", ", ".join(f"{n} {lines}" for lines, n in longest_functions(5)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
