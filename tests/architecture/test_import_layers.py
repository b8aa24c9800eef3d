"""The package's layers (docs/design.md): no import goes to a higher floor, and no module imports, directly or
through others, a module that imports it back (rooms of one floor may use each other, without circles).

Imports inside functions count too (they are how a dependency is hidden, not removed). Strings naming modules
(the catalog, the stand-in table) are not imports: that is how the lower floors reach the upper ones lazily.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FLOORS: dict[str, int] = {
    "extern": 0, "fourdfy.config": 0, "fourdfy.errors": 0, "fourdfy.schedule": 0, "fourdfy.utils": 0,
    "fourdfy.registry": 1, "fourdfy.stand_ins": 1, "fourdfy.field_components": 1, "fourdfy.catalog": 2,
    "fourdfy.data": 2, "fourdfy.geometry": 2, "fourdfy.materials": 2, "fourdfy.background": 2,
    "fourdfy.prompt_processors": 2,
    "fourdfy.renderers": 3, "fourdfy.guidance": 3,
    "fourdfy.evaluation": 4, "fourdfy.exporters": 4,
    "fourdfy.systems": 5,
    "fourdfy.experiment": 6, "fourdfy.run": 6, "fourdfy.pipeline": 6, "fourdfy.__main__": 6, "fourdfy.evaluate": 6,
    "fourdfy": 6,
    # tools over trial folders (they read a trial's configs like the engine does): engine floor
    "fourdfy.evaluation.trial": 6, "fourdfy.evaluation.evaluate_trial": 6, "fourdfy.evaluation.suite": 6,
    "fourdfy.evaluation.__main__": 6, "fourdfy.evaluation.page": 6, "fourdfy.exporters.trial_export": 6,
    "fourdfy.exporters.__main__": 6,
}  # fmt: skip
"""Floor of each room: 0 foundations and external networks; 1 building blocks; 2 parts; 3 parts built on parts;
4 evaluation and export; 5 systems; 6 the engine (configs, trials, launching) and the tools that work on trial
folders."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def room(module: str) -> str:
    """The longest key of FLOORS that is ``module`` or a package containing it."""
    best = ""
    for key in FLOORS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    if not best:
        raise AssertionError(f"{module} belongs to no room of FLOORS: add it (and to docs/design.md)")
    return best


def imports_of(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in ("fourdfy", "extern"))
    return found


def graph() -> dict[str, set[str]]:
    files = [p for d in ("fourdfy", "extern") for p in (ROOT / d).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    edges = {}
    for name, path in modules.items():
        # "from fourdfy.x import y": y may be a module or a name; keep whichever is a module
        edges[name] = {m for m in imports_of(path) if m in modules and m != name}
    return edges


def test_imports_go_down_the_floors():
    bad = []
    for src, targets in graph().items():
        for dst in targets:
            a, b = room(src), room(dst)
            if FLOORS[b] > FLOORS[a] and not src.startswith(b + "."):
                bad.append(f"{src} (floor {FLOORS[a]}) imports {dst} (floor {FLOORS[b]})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ importing its own modules is not a circle, and neither is a module importing its package
    for src in edges:
        edges[src] = {d for d in edges[src] if not (d.startswith(src + ".") or src.startswith(d + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule can fail: a lower floor importing an upper one is reported."""
    assert FLOORS[room("fourdfy.geometry.implicit_volume")] < FLOORS[room("fourdfy.systems.fourdfy")]
    assert "fourdfy.systems.fourdfy" in imports_of(_write(tmp_path, "def f():\n    from fourdfy.systems.fourdfy import X\n"))


def _write(folder: Path, text: str) -> Path:
    path = folder / "probe.py"
    path.write_text(text)
    return path
