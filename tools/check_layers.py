#!/usr/bin/env python3
"""The layering check (docs/design.md, "Layers"): which package may import which, no import cycles, and a pure core.

Reads every .py under neurostimd/, drivers/ (the module `neurostimd.drivers`), firmware_sim/
(`neurostimd.firmware_sim`), and for the top-level-name rule also tests/ and tools/, with `ast`: every import
statement, top-level, inside functions (lazy) and under `if TYPE_CHECKING:`, plus the dynamic ones whose target is a
literal (`importlib.import_module("m")`, `__import__("m")`, the `"module:attr"` strings of neurostimd.registry's and
the CLI's tables, and `patch("m.attr")` targets). Relative imports are resolved against the importing module.

Rules (each violation is printed as `file:line: module imports X (rule: ...)`; exit 1 if there is any):
- drivers: imports nothing of neurostimd outside neurostimd.drivers (the simulator included);
- firmware_sim: imports nothing of neurostimd outside neurostimd.firmware_sim and neurostimd.drivers;
- core: imports of neurostimd only neurostimd.core, neurostimd.drivers.types and neurostimd.errors, and never (not
  even lazily) serial, pylsl, tensorflow, keras, ai_edge_litert or matplotlib;
- nowhere (tests/ and tools/ included) a top-level `drivers` or `firmware_sim` import: they are neurostimd.drivers
  and neurostimd.firmware_sim, and a second name makes a second copy of every module and class;
- no import cycle between modules, lazy and dynamic imports included, each cycle printed as a chain. Imports under
  TYPE_CHECKING never run, so they cannot close a cycle and are left out of it (that is how a type-only dependency
  is meant to be written); the layer rules above do apply to them, since a type from a higher layer is a dependency
  of the design all the same;
- run time, one fresh interpreter per module: `import neurostimd.core.<each module>` and `import neurostimd.config`
  leave none of serial, pylsl, tensorflow, keras, ai_edge_litert, matplotlib in sys.modules.

Usage: python tools/check_layers.py [--root DIR] [--no-runtime] [--list-type-checking]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

PKG = "neurostimd"
# folder (relative to the root) → the module name its files have; drivers/ and firmware_sim/ are installed inside
# neurostimd (neurostimd/drivers and neurostimd/firmware_sim are links to them, and are not walked twice).
PACKAGES = {"neurostimd": PKG, "drivers": f"{PKG}.drivers", "firmware_sim": f"{PKG}.firmware_sim"}
# Folders checked for the top-level-name rule only (their modules are not part of the graph).
EXTRA = {"tests": "tests", "tools": "tools"}
HEAVY = ("serial", "pylsl", "tensorflow", "keras", "ai_edge_litert", "matplotlib")
TOP_LEVEL_ALIASES = ("drivers", "firmware_sim")
CORE = f"{PKG}.core"
CORE_MAY_IMPORT = (CORE, f"{PKG}.drivers.types", f"{PKG}.errors")
# The layers between the core and the loop, and what they may not import (the loop, the service, the commands).
MIDDLE = ("sources", "outputs", "model")
ABOVE_MIDDLE = ("loop", "service", "commands")
RUNTIME_EXTRA = (f"{PKG}.config",)
_MODULE_ATTR = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


@dataclass(frozen=True)
class Import:
    """One import: `module` (the importer, in `file` at `line`) imports `target` (absolute dotted name, resolved
    to the most specific module it names when that module is ours). `how`: "top", "lazy" (inside a function),
    "type_checking" (under `if TYPE_CHECKING:`) or "dynamic" (a literal module name in code)."""

    module: str
    file: str
    line: int
    target: str
    how: str


@dataclass(frozen=True, order=True)
class Violation:
    file: str
    line: int
    module: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.module} imports {self.imported} (rule: {self.rule})"


@dataclass
class Tree:
    root: Path
    modules: dict[str, str]  # module name → file (relative to root), for neurostimd, drivers and firmware_sim
    imports: list[Import]  # from those modules
    extra_imports: list[Import]  # from tests/ and tools/
    errors: list[Violation]  # files that do not parse, relative imports above the top


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):  # does not follow the neurostimd/drivers links
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def _module_name(rel: Path, prefix: str) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([prefix, *parts])


def _files(root: Path, folders: dict[str, str]) -> Iterator[tuple[str, str, bool]]:
    """(module, file relative to root, is a package __init__) for every .py in the folders."""
    for folder, prefix in folders.items():
        base = root / folder
        if not base.is_dir():
            continue
        for path in _walk(base):
            rel = path.relative_to(base)
            yield _module_name(rel, prefix), path.relative_to(root).as_posix(), rel.name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


class _Collector(ast.NodeVisitor):
    """Every import of one file, as raw (line, how, absolute base, imported names) with relative ones resolved."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[int, str, str, tuple[str, ...]]] = []
        # Strings that look like a module name (a table's "module:attr", a patch target): imports only when the
        # module is ours, or is a top-level `drivers`/`firmware_sim` one.
        self.guessed: list[tuple[int, str, str, tuple[str, ...]]] = []
        self.bad_relative: list[tuple[int, str]] = []
        self._depth_fn = 0
        self._depth_tc = 0

    def _how(self) -> str:
        return "type_checking" if self._depth_tc else "lazy" if self._depth_fn else "top"

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._depth_fn += 1
        self.generic_visit(node)
        self._depth_fn -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        self._depth_tc += 1
        for stmt in node.body:
            self.visit(stmt)
        self._depth_tc -= 1
        for stmt in node.orelse:
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((node.lineno, self._how(), alias.name, ()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".") if self.package else []
            if node.level > len(parts):
                self.bad_relative.append((node.lineno, "." * node.level + base))
                return
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        self.found.append((node.lineno, self._how(), base, tuple(a.name for a in node.names if a.name != "*")))

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node.func)
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if name in ("import_module", "__import__") and (_DOTTED.fullmatch(arg.value) or arg.value.isidentifier()):
                self.found.append((node.lineno, "dynamic", arg.value, ()))
            elif name in ("patch", "setattr") and _DOTTED.fullmatch(arg.value):  # patch("m.attr") imports m
                self.guessed.append((node.lineno, "dynamic", arg.value.rpartition(".")[0], ()))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and _MODULE_ATTR.fullmatch(node.value):  # the "module:attr" tables
            self.guessed.append((node.lineno, "dynamic", node.value.partition(":")[0], ()))


def _resolve(base: str, names: tuple[str, ...], modules: dict[str, str]) -> list[str]:
    """The modules `from base import names` (or `import base`) names: `base.name` where that is one of ours,
    else the longest prefix of `base` that is ours, else `base` itself (a third-party module)."""
    targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
    if len(targets) == len(names) and names:
        return targets
    parts = base.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if name in modules:
            return [*targets, name]
    return [*targets, base]


def _parse(root: Path, folders: dict[str, str], modules: dict[str, str],
           errors: list[Violation]) -> list[Import]:
    out: list[Import] = []
    for module, file, is_package in _files(root, folders):
        try:
            tree = ast.parse((root / file).read_text(encoding="utf-8"), filename=file)
        except (SyntaxError, UnicodeDecodeError) as err:
            errors.append(Violation(file, getattr(err, "lineno", None) or 1, module, "?",
                                    f"the file must parse: {err}"))
            continue
        col = _Collector(module, is_package)
        col.visit(tree)
        for line, rel in col.bad_relative:
            errors.append(Violation(file, line, module, rel, "a relative import must stay inside its package"))
        guessed = [g for g in col.guessed if g[2] in modules or g[2].split(".")[0] in TOP_LEVEL_ALIASES]
        for line, how, base, names in sorted([*col.found, *guessed]):
            for target in _resolve(base, names, modules):
                out.append(Import(module, file, line, target, how))
    return out


def load(root: Path) -> Tree:
    """Parse the tree at `root` (the repository root: it holds neurostimd/, drivers/, firmware_sim/)."""
    root = root.resolve()
    modules = {m: f for m, f, _ in _files(root, PACKAGES)}
    errors: list[Violation] = []
    imports = _parse(root, PACKAGES, modules, errors)
    extra = _parse(root, EXTRA, modules, errors)
    return Tree(root, modules, imports, extra, errors)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _label(imp: Import) -> str:
    return imp.target + {"top": "", "lazy": " (lazy)", "type_checking": " (TYPE_CHECKING)",
                         "dynamic": " (dynamic)"}[imp.how]


def layer_violations(tree: Tree) -> list[Violation]:
    """The drivers, firmware_sim, core and top-level-name rules."""
    out: list[Violation] = []
    for imp in [*tree.imports, *tree.extra_imports]:
        first = imp.target.split(".")[0]
        if first in TOP_LEVEL_ALIASES:
            out.append(Violation(imp.file, imp.line, imp.module, _label(imp),
                                 f"import it as {PKG}.{imp.target}: `{first}` is installed only inside {PKG}"))
    for imp in tree.imports:
        ours = _within(imp.target, PKG)
        if _within(imp.module, f"{PKG}.drivers"):
            if ours and not _within(imp.target, f"{PKG}.drivers"):
                out.append(Violation(imp.file, imp.line, imp.module, _label(imp),
                                     f"drivers import nothing of {PKG} outside {PKG}.drivers, nor the simulator"))
        elif _within(imp.module, f"{PKG}.firmware_sim"):
            if ours and not (_within(imp.target, f"{PKG}.firmware_sim") or _within(imp.target, f"{PKG}.drivers")):
                out.append(Violation(imp.file, imp.line, imp.module, _label(imp),
                                     f"firmware_sim imports of {PKG} only {PKG}.firmware_sim and {PKG}.drivers"))
        elif _within(imp.module, CORE):
            if ours and not any(_within(imp.target, ok) for ok in CORE_MAY_IMPORT):
                out.append(Violation(imp.file, imp.line, imp.module, _label(imp),
                                     f"core imports of {PKG} only {', '.join(CORE_MAY_IMPORT)}; "
                                     "pass what it needs in as an argument"))
            if imp.target.split(".")[0] in HEAVY:
                out.append(Violation(imp.file, imp.line, imp.module, _label(imp),
                                     "core is pure: no I/O or model library, not even lazily"))
        elif any(_within(imp.module, f"{PKG}.{mid}") for mid in MIDDLE) and \
                any(_within(imp.target, f"{PKG}.{top}") for top in ABOVE_MIDDLE):
            out.append(Violation(imp.file, imp.line, imp.module, _label(imp),
                                 f"sources, outputs and the model import nothing of {PKG}."
                                 f"{{{','.join(ABOVE_MIDDLE)}}}: the loop, the service and the commands use "
                                 "them, not the other way round"))
    return out


def _graph(tree: Tree) -> dict[str, dict[str, Import]]:
    """module → {imported module of ours → its first import}, without TYPE_CHECKING imports and self-imports."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in tree.modules}
    for imp in sorted(tree.imports, key=lambda i: (i.file, i.line)):
        if imp.how != "type_checking" and imp.target in tree.modules and imp.target != imp.module:
            graph[imp.module].setdefault(imp.target, imp)
    return graph


def _components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _shortest_path(graph: dict[str, dict[str, Import]], src: str, dst: str, allowed: set[str]) -> list[str]:
    prev: dict[str, str] = {}
    seen = {src}
    queue = deque([src])
    while queue:
        node = queue.popleft()
        if node == dst:
            path = [dst]
            while path[-1] != src:
                path.append(prev[path[-1]])
            return path[::-1]
        for nxt in sorted(graph[node]):
            if nxt in allowed and nxt not in seen:
                seen.add(nxt)
                prev[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{dst} is not reachable from {src} inside its component")


def cycles(tree: Tree) -> list[list[str]]:
    """Import cycles as chains [a, b, ..., a]: for every import inside a cycle, the shortest cycle through it, each
    cycle once (so every import that takes part in a cycle is shown)."""
    graph = _graph(tree)
    found: dict[tuple[str, ...], list[str]] = {}
    for comp in _components(graph):
        members = set(comp)
        for a in comp:
            for b in sorted(graph[a]):
                if b not in members:
                    continue
                ring = [a, *_shortest_path(graph, b, a, members)][:-1]
                k = ring.index(min(ring))
                ring = ring[k:] + ring[:k]
                found.setdefault(tuple(ring), [*ring, ring[0]])
    return [found[k] for k in sorted(found)]


def cycle_violations(tree: Tree) -> list[Violation]:
    graph = _graph(tree)
    out = []
    for chain in cycles(tree):
        hops = [graph[a][b] for a, b in pairwise(chain)]
        text = " -> ".join([chain[0], *(f"{_label(h)} [{h.file}:{h.line}]" for h in hops)])
        first = hops[0]
        out.append(Violation(first.file, first.line, first.module, _label(first),
                             f"no import cycles, lazy imports included: {text}"))
    return out


_PROBE = r"""
import importlib, json, sys
root, name, heavy = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.path.insert(0, root)
try:
    importlib.import_module(name)
except BaseException as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    raise SystemExit(0)
pkg = sys.modules[name.split(".")[0]]
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy),
                  "from": getattr(pkg, "__file__", None)}))
"""


def _probe(root: Path, name: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    try:
        res = subprocess.run([sys.executable, "-c", _PROBE, str(root), name, ",".join(HEAVY)], cwd=root, env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "the import did not finish within 120 s"}
    try:
        return dict(json.loads(res.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        return {"error": f"the probe exited {res.returncode}: {res.stderr.strip()[-500:]}"}


def _static_path(tree: Tree, src: str, heavy: str) -> list[Import]:
    """The chain of run-time (top-level) imports from `src` to an import of `heavy`, if the sources show one."""
    top: dict[str, list[Import]] = {}
    for imp in sorted(tree.imports, key=lambda i: (i.file, i.line)):
        if imp.how == "top":
            top.setdefault(imp.module, []).append(imp)
    prev: dict[str, Import] = {}
    queue, seen = deque([src]), {src}
    while queue:
        node = queue.popleft()
        for imp in top.get(node, []):
            if imp.target.split(".")[0] == heavy:
                chain = [imp]
                while chain[0].module != src:
                    chain.insert(0, prev[chain[0].module])
                return chain
            if imp.target in tree.modules and imp.target not in seen:
                seen.add(imp.target)
                prev[imp.target] = imp
                queue.append(imp.target)
    return []


def runtime_targets(tree: Tree) -> list[str]:
    return sorted(m for m in tree.modules if _within(m, CORE)) + [m for m in RUNTIME_EXTRA if m in tree.modules]


def runtime_violations(tree: Tree, jobs: int = 4) -> list[Violation]:
    """Import each core module and neurostimd.config in its own fresh interpreter and look in sys.modules."""
    targets = runtime_targets(tree)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda name: _probe(tree.root, name), targets))
    out = []
    for name, res in zip(targets, results, strict=True):
        file = tree.modules[name]
        if "error" in res:
            out.append(Violation(file, 1, name, "?", f"every core module and {PKG}.config must import on its own; "
                                 f"`import {name}` failed: {res['error']}"))
            continue
        where = Path(str(res.get("from"))).resolve()
        if tree.root not in where.parents:
            out.append(Violation(file, 1, name, PKG, f"the probe must import this tree, but {PKG} came from "
                                 f"{where}; run the check with a Python that has no other {PKG} ahead on its path"))
            continue
        loaded = res.get("loaded")
        assert isinstance(loaded, list)
        for heavy in sorted({str(m).split(".")[0] for m in loaded}):
            chain = _static_path(tree, name, heavy)
            rule = f"`import {name}` loads no I/O or model library (found {heavy} in sys.modules"
            if chain:
                path = " -> ".join([name, *(f"{c.target} [{c.file}:{c.line}]" for c in chain)])
                out.append(Violation(chain[0].file, chain[0].line, name, f"{heavy} at run time", f"{rule}: {path})"))
            else:
                out.append(Violation(file, 1, name, f"{heavy} at run time",
                                     f"{rule}; a third-party module loads it, not an import in our sources)"))
    return out


def check(root: Path, *, runtime: bool = True) -> list[Violation]:
    """Every violation in the tree at `root`, sorted by file and line."""
    tree = load(root)
    found = [*tree.errors, *layer_violations(tree), *cycle_violations(tree)]
    if runtime:
        found += runtime_violations(tree)
    return sorted(set(found))


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="the repository root (default: the one this script is in)")
    ap.add_argument("--no-runtime", action="store_true", help="skip the fresh-interpreter import probes")
    ap.add_argument("--list-type-checking", action="store_true",
                    help="also list the imports under TYPE_CHECKING (allowed in cycles; the layer rules still apply)")
    args = ap.parse_args(None if argv is None else list(argv))
    if not (args.root / PKG).is_dir():
        print(f"{args.root}: no {PKG}/ folder here; pass the repository root with --root", file=sys.stderr)
        return 2
    found = check(args.root, runtime=not args.no_runtime)
    if args.list_type_checking:
        for imp in sorted(load(args.root).imports, key=lambda i: (i.file, i.line)):
            if imp.how == "type_checking":
                print(f"{imp.file}:{imp.line}: {imp.module} imports {imp.target} (TYPE_CHECKING only)")
    for v in found:
        print(v)
    if found:
        print(f"{len(found)} layering violation(s); the rules are in tools/check_layers.py and docs/design.md")
        return 1
    print("layers: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
