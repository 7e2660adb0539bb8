"""The import rule of docs/architecture.md: a module of prealign_scale imports only its own layer or lower ones.

Layers, low to high (a "room" is a top-level package or module of prealign_scale):

    0  kernels (a leaf: imports nothing of the package), config*, dist*
    1  text
    2  alignment, model
    3  data
    4  engine, eval          (engine and eval never import each other)
    5  launch
    6  data_tools/, launchers/, benchmarks/  (front doors, outside the package)

Every ``import`` / ``from ... import`` of every .py file under prealign_scale/ counts, function-local ones
included (a lazy import is still a dependency). Pure: parses the sources with `ast`, imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "prealign_scale"

# room -> layer. A room is the first name below prealign_scale ("engine" for prealign_scale.engine.run,
# "config" for prealign_scale/config.py); names starting with config or dist share layer 0.
LAYERS = {
    "kernels": 0, "config": 0, "dist": 0,
    "text": 1,
    "alignment": 2, "model": 2,
    "data": 3,
    "engine": 4, "eval": 4,
    "launch": 5,
}
LEAF_ROOMS = {"kernels"}  # may import nothing of the package outside themselves
APART = {frozenset({"engine", "eval"})}  # same layer, but never import each other

# Imports that break the rule but are tolerated for now: none. Each entry would be (importing file, imported
# module); an entry that no longer occurs fails test_known_violations_still_exist, so the list only shrinks.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def room_of(module: str) -> str | None:
    """'prealign_scale.engine.run' -> 'engine'; 'prealign_scale.dist_mpi' -> 'dist'; None outside the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    name = parts[1]
    for prefix in ("config", "dist"):
        if name.startswith(prefix):
            return prefix
    return name


def module_name(path: Path, root: Path) -> str:
    """prealign_scale/engine/run.py -> prealign_scale.engine.run (a package's __init__ -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, function-local and relative ones included.

    ``from prealign_scale import dist`` counts as ``prealign_scale.dist`` (the name may be a submodule)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == PACKAGE:  # from prealign_scale import dist, config
                out += [(node.lineno, f"{PACKAGE}.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, target))
    return out


def violations(where: str, module: str, imports: list[tuple[int, str]]) -> list[str]:
    """`file:line: what is wrong` for each import of `module` (in file `where`) that breaks the layer rule."""
    src_room = room_of(module)
    if src_room is None:
        return []
    problems = []
    for line, target in imports:
        dst_room = room_of(target)
        if dst_room is None or dst_room == src_room:
            continue
        if src_room not in LAYERS or dst_room not in LAYERS:
            unknown = src_room if src_room not in LAYERS else dst_room
            problems.append(f"{where}:{line}: room {unknown!r} has no layer: add it to LAYERS and "
                            "docs/architecture.md")
        elif src_room in LEAF_ROOMS:
            problems.append(f"{where}:{line}: {src_room} is a leaf and may import nothing of the package "
                            f"(imports {target})")
        elif frozenset({src_room, dst_room}) in APART:
            problems.append(f"{where}:{line}: {src_room} must not import {dst_room} (imports {target})")
        elif LAYERS[dst_room] > LAYERS[src_room]:
            problems.append(f"{where}:{line}: {src_room} (layer {LAYERS[src_room]}) imports {target} "
                            f"({dst_room}, layer {LAYERS[dst_room]}): a layer may import only itself or lower")
    return problems


def package_imports(root: Path = ROOT) -> dict[str, list[tuple[int, str]]]:
    """'prealign_scale/x/y.py' -> its imports, for every .py file of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(path, root)
        out[str(path.relative_to(root))] = imported_modules(path.read_text(), module, path.name == "__init__.py")
    return out


def all_violations(root: Path = ROOT) -> list[str]:
    problems = []
    for where, imports in package_imports(root).items():
        module = module_name(root / where, root)
        keep = [(line, t) for line, t in imports if (where, _top_module(t)) not in KNOWN_VIOLATIONS]
        problems += violations(where, module, keep)
    return problems


def _top_module(target: str) -> str:
    """prealign_scale.model.presets.X is reported as the module prealign_scale.model.presets (3 parts)."""
    return ".".join(target.split(".")[:3])


def room_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """room -> the other rooms it imports (every import, known violations included)."""
    graph: dict[str, set[str]] = {}
    for where, imports in package_imports(root).items():
        src = room_of(module_name(root / where, root))
        if src is None:
            continue
        graph.setdefault(src, set())
        for _, target in imports:
            dst = room_of(target)
            if dst is not None and dst != src:
                graph[src].add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]], ignore: set[tuple[str, str]] = frozenset()) -> list[str] | None:
    """One cycle of rooms (['a', 'b', 'a']) or None; edges in `ignore` are left out."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:  # path: the rooms from the start to `node`
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if (node, nxt) in ignore:
                continue
            if state.get(nxt) == 1:  # back to a room on the current path: a cycle
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------------------- the rule


def test_every_room_has_a_layer():
    rooms = {room_of(module_name(p, ROOT)) for p in (ROOT / PACKAGE).rglob("*.py")} - {None}
    assert rooms <= set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))} (add them to LAYERS " \
                                 "here and to docs/architecture.md)"


def test_no_layer_imports_a_higher_one():
    problems = all_violations()
    assert not problems, "import rule broken (docs/architecture.md):\n" + "\n".join(problems)


def test_kernels_import_nothing_of_the_package():
    problems = []
    for where, imports in package_imports().items():
        if not where.startswith(f"{PACKAGE}/kernels/"):
            continue
        problems += [f"{where}:{line}: imports {t}" for line, t in imports
                     if room_of(t) not in (None, "kernels") and (where, _top_module(t)) not in KNOWN_VIOLATIONS]
    assert not problems, "kernels/ must be a leaf:\n" + "\n".join(problems)


def test_no_import_cycle_between_rooms():
    # Known violations are the only edges that may still close a cycle until their branches are merged.
    known = {(room_of(module_name(ROOT / f, ROOT)), room_of(t)) for f, t in KNOWN_VIOLATIONS}
    cycle = find_cycle(room_graph(), ignore=known)
    assert cycle is None, f"rooms import each other: {' -> '.join(cycle)}"


def test_known_violations_still_exist():
    """An entry that no longer occurs must leave KNOWN_VIOLATIONS (the list only shrinks)."""
    seen = {(where, _top_module(t)) for where, imports in package_imports().items() for _, t in imports}
    stale = sorted(KNOWN_VIOLATIONS - seen)
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {stale}"


# ---------------------------------------------------------------------------------------------- the checker


@pytest.mark.parametrize("module, source, expected", [
    # a lower layer importing a higher one, function-local
    ("prealign_scale.alignment.clone", "def f():\n    from prealign_scale.data.corpus import x\n",
     "x.py:2: alignment (layer 2) imports prealign_scale.data.corpus (data, layer 3)"),
    # the engine writing through the launch layer
    ("prealign_scale.engine.run", "import prealign_scale.launch.sweep\n",
     "x.py:1: engine (layer 4) imports prealign_scale.launch.sweep (launch, layer 5)"),
    # engine and eval share a layer but stay apart, also through `from prealign_scale import eval`
    ("prealign_scale.eval.probe", "from prealign_scale import engine\n",
     "x.py:1: eval must not import engine (imports prealign_scale.engine)"),
    # kernels are a leaf, even towards layer 0
    ("prealign_scale.kernels.align_loss", "\n\nfrom prealign_scale.config import Config\n",
     "x.py:3: kernels is a leaf and may import nothing of the package (imports prealign_scale.config)"),
    # a relative import resolves against the importing module
    ("prealign_scale.data.shard_format", "from ..launch import sweep\n",
     "x.py:1: data (layer 3) imports prealign_scale.launch (launch, layer 5)"),
    # a new room must be given a layer
    ("prealign_scale.data.x", "from prealign_scale.newroom import y\n",
     "x.py:1: room 'newroom' has no layer"),
])
def test_checker_catches_a_violation(module, source, expected):
    problems = violations("x.py", module, imported_modules(source, module))
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_checker_allows_downward_and_own_room_imports():
    source = ("import os\nfrom prealign_scale.alignment.table import AlignmentTable\n"
              "from prealign_scale.text.corpus import iter_documents\nfrom prealign_scale import dist\n"
              "from prealign_scale.data.shard_format import IGNORE_INDEX\nfrom . import packing\n")
    module = "prealign_scale.data.build_shards"
    assert violations("x.py", module, imported_modules(source, module)) == []


def test_cycle_finder():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}, ignore={("b", "a")}) is None
