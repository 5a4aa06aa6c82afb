"""The package layout: no import cycles (late imports inside functions included), nothing dead."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "rtdetr_prune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (functions included)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    edges.add(sub if sub in files else base)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    assert _cycle(_imports()) is None, " -> ".join(_cycle(_imports()))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_engine_code_does_not_name_a_model_family():
    """pruning/, measure/, bench/, train/, report/ and the pipeline reach models only through the
    family interface (rtdetr_prune.models), so a second family plugs in without touching them."""
    generic = [p for sub in ("pruning", "measure", "bench", "train", "report", "io", "data")
               for p in (PKG / sub).rglob("*.py")] + [PKG / "pipeline.py"]
    graph = _imports()
    offenders = [f"{_module_name(p)} imports {m}" for p in generic for m in graph[_module_name(p)]
                 if m.startswith("rtdetr_prune.models.") and m not in ("rtdetr_prune.models.family",)]
    assert not offenders, offenders


def test_no_flat_prefix_families():
    """Modules sharing a prefix (bench_*, report_*) belong in a subpackage."""
    for folder in [PKG, *[p for p in PKG.rglob("*") if p.is_dir()]]:
        stems = [p.stem for p in folder.glob("*.py") if p.stem != "__init__" and "_" in p.stem]
        prefixes = [s.split("_")[0] for s in stems]
        crowded = {p for p in prefixes if prefixes.count(p) >= 3}
        assert not crowded, f"{folder}: {crowded}"
