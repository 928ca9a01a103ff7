"""Layering contracts over the real import statements of the package (issue 10 item 3).

Every ``.py`` file under ``rtmoe/``, ``offline/``, ``calibration/`` and ``plugins/`` is
parsed with :mod:`ast` (nothing is imported). The folders map to the installed module
names exactly as pyproject's ``package-dir`` does: ``offline/x.py`` is ``rtmoe.offline.x``,
``calibration/`` is ``rtmoe.calibration``, ``plugins/`` is ``rtmoe.plugins``.

Rules of the graph (the same as import-linter's grimp):

- ``import a.b.c`` and ``from a.b import c`` (``c`` a module) give an edge to ``a.b.c``;
  ``from a.b import name`` (``name`` not a module) gives an edge to ``a.b``. Relative
  imports are resolved against the importing module's package. Parent packages are not
  added implicitly (``import a.b.c`` also runs ``a/__init__.py``; a package that imports
  its own submodules would otherwise make every sibling import a cycle).
- Imports under ``if TYPE_CHECKING:`` are not imports: they never run.
- The **contracts** (a)-(d) count every import, at module top or inside a function, and
  follow them transitively: a lazy import still imports, it only imports later. A failure
  prints the chain.
- The **cycle check** (e) counts only module-top-level imports (those run when the module
  is imported, including ones in class bodies and ``try:``/``if`` blocks at top level):
  moving an import into the function that needs it is the legitimate way to break a
  cycle.

Contract (b) allows torch in the model's torch spectral front end only (``TORCH_DSP``:
rtmoe.dsp.spectral, .masking, .bands); the rest of rtmoe.dsp and all of rtmoe.signal are
torch-free.

The CLI dispatcher ``rtmoe.cli`` gets no exemption from contract (a): it finds the
subcommands of offline/, calibration/ and plugins/ through the ``rtmoe.commands`` entry
points, so it needs no import of them, lazy or not.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Source folder -> the module name it installs as (pyproject [tool.setuptools] package-dir).
FOLDERS = {
    "rtmoe": "rtmoe",
    "offline": "rtmoe.offline",
    "calibration": "rtmoe.calibration",
    "plugins": "rtmoe.plugins",
}
SATELLITES = ("rtmoe.offline", "rtmoe.calibration", "rtmoe.plugins")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    # (module, name, line, top_level) per imported name: `import a.b` -> ("a.b", None),
    # `from a import b` -> ("a", "b"), relative ones made absolute; ImportGraph.resolve
    # decides whether "a.b" is a module.
    raw: list[tuple[str, str | None, int, bool]] = field(default_factory=list)


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    """``offline/corpus/cli.py`` -> ``("rtmoe.offline.corpus.cli", False)``."""
    rel = path.relative_to(root)
    parts = list(rel.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    base = FOLDERS[parts[0]]
    return ".".join([base, *parts[1:]]), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    body: Iterable[ast.stmt], top_level: bool
) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements in ``body``, with whether they run at module import time."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top_level
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.orelse, top_level)  # `else:` of TYPE_CHECKING runs
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _imports(node.body, False)
        else:
            # class bodies, try/with/if/for at top level run at import time; so do their
            # nested statements, except function bodies (handled above when reached).
            for child_field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, child_field, None)
                if not children:
                    continue
                stmts: list[ast.stmt] = []
                for child in children:
                    if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                        stmts.extend(child.body)
                    else:
                        stmts.append(child)
                yield from _imports(stmts, top_level)


def parse_module(path: Path, root: Path = ROOT) -> Module:
    name, is_package = module_name(path, root)
    module = Module(name, path, is_package)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if is_package else name.rpartition(".")[0]
    for node, top in _imports(tree.body, True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.raw.append((alias.name, None, node.lineno, top))
            continue
        if node.level:
            base_parts = package.split(".")
            if node.level > 1:
                base_parts = base_parts[: -(node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            module.raw.append((base, alias.name, node.lineno, top))
    return module


@dataclass(frozen=True)
class Edge:
    source: str
    target: str  # an internal module name, or the top-level name of an external one
    line: int
    top_level: bool


class ImportGraph:
    """Internal modules, and their import edges (internal and external)."""

    def __init__(self, modules: dict[str, Module], root: Path = ROOT):
        self.modules = modules
        self.root = root
        self.edges: dict[str, list[Edge]] = {name: [] for name in modules}
        for module in modules.values():
            for base, name, line, top in module.raw:
                for target in self.resolve(base, name):
                    self.edges[module.name].append(Edge(module.name, target, line, top))

    def resolve(self, base: str, name: str | None) -> list[str]:
        if name is not None and name != "*" and f"{base}.{name}" in self.modules:
            return [f"{base}.{name}"]
        if base in self.modules or base.split(".")[0] == "rtmoe":
            # A missing rtmoe module is kept by name (it fails at runtime, not here).
            return [base]
        return [base.split(".")[0]]  # external: its distribution's top-level name

    @classmethod
    def from_tree(cls, root: Path = ROOT) -> ImportGraph:
        modules = {}
        for folder in FOLDERS:
            for path in sorted((root / folder).rglob("*.py")):
                if ".venv" in path.parts or "__pycache__" in path.parts:
                    continue
                module = parse_module(path, root)
                modules[module.name] = module
        return cls(modules, root)

    def chain(
        self, source: str, is_target, *, top_level_only: bool = False, avoid=lambda m: False
    ) -> list[Edge] | None:
        """Shortest import chain from ``source`` to a module where ``is_target`` holds.

        Follows internal modules only (external ones are leaves); ``avoid`` modules are
        not passed through.
        """
        parent: dict[str, Edge | None] = {source: None}
        queue = deque([source])
        while queue:
            current = queue.popleft()
            for edge in self.edges.get(current, []):
                if top_level_only and not edge.top_level:
                    continue
                if is_target(edge.target):  # may be `source` itself (a cycle)
                    path = [edge]
                    while (back := parent[path[0].source]) is not None:
                        path.insert(0, back)
                    return path
                if edge.target in parent:
                    continue
                parent[edge.target] = edge
                if edge.target in self.modules and not avoid(edge.target):
                    queue.append(edge.target)
        return None

    def cycles(self) -> list[list[str]]:
        """One cycle per strongly connected component of the top-level import graph."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        components: list[list[str]] = []
        counter = [0]

        def succ(name: str) -> list[str]:
            return [e.target for e in self.edges[name] if e.top_level and e.target in self.modules]

        def strongconnect(root: str) -> None:
            # iterative Tarjan (recursion would be fine at this size; this is just safe)
            work = [(root, iter(succ(root)))]
            index[root] = low[root] = counter[0]
            counter[0] += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                node, children = work[-1]
                advanced = False
                for child in children:
                    if child not in index:
                        index[child] = low[child] = counter[0]
                        counter[0] += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(succ(child))))
                        advanced = True
                        break
                    if child in on_stack:
                        low[node] = min(low[node], index[child])
                if advanced:
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in succ(node):
                        components.append(sorted(component))

        for name in sorted(self.modules):
            if name not in index:
                strongconnect(name)

        cycles = []
        for component in components:
            members = set(component)
            start = component[0]
            path = self.chain(
                start,
                lambda m, s=start: m == s,
                top_level_only=True,
                avoid=lambda m, ms=members: m not in ms,
            )
            cycles.append([start] + [e.target for e in path] if path else component)
        return cycles


def in_package(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def format_chain(chain: list[Edge], graph: ImportGraph) -> str:
    steps = []
    for edge in chain:
        where = graph.modules[edge.source].path.relative_to(graph.root)
        how = "" if edge.top_level else " (inside a function)"
        steps.append(f"  {edge.source} -> {edge.target}   [{where}:{edge.line}{how}]")
    return "\n".join(steps)


def violations(graph: ImportGraph, sources, forbidden) -> list[str]:
    """One entry per offending import statement: the statement, and every checked module
    that reaches it (with the shortest chain of the first of them)."""
    by_statement: dict[tuple[str, str, int], list[tuple[str, list[Edge]]]] = {}
    for name in sorted(graph.modules):
        if not sources(name):
            continue
        chain = graph.chain(name, forbidden)
        if chain:
            last = chain[-1]
            by_statement.setdefault((last.source, last.target, last.line), []).append((name, chain))
    found = []
    for (_, target, _), reached in sorted(by_statement.items()):
        # the chain of the module that imports the target itself, if it is checked
        name, chain = min(reached, key=lambda item: len(item[1]))
        others = [n for n, _ in reached if n != name]
        also = f" (also reached from {', '.join(others)})" if others else ""
        found.append(f"{name} imports {target}{also}:\n" + format_chain(chain, graph))
    return found


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph.from_tree()


# -- the contracts -------------------------------------------------------------------------


def contract_trunk_independent(graph: ImportGraph) -> list[str]:
    """(a) the trunk never imports offline/, calibration/, plugins/."""
    return violations(
        graph,
        lambda m: in_package(m, "rtmoe") and not in_package(m, *SATELLITES),
        lambda m: in_package(m, *SATELLITES),
    )


DSP_FORBIDDEN = ("rtmoe.models", "rtmoe.stream", "rtmoe.engine", "rtmoe.transport", "rtmoe.runtime")

# The model's spectral front end is torch by design (DESIGN.md habit 1: pure functions over
# arrays/tensors; SPEC §2 STFT, masking, band power): these dsp modules may import torch.
# Everything else in rtmoe.dsp (the numpy/scipy filters and resamplers) and all of
# rtmoe.signal, the one preprocessing chain, must not, even indirectly.
TORCH_DSP = ("rtmoe.dsp.spectral", "rtmoe.dsp.masking", "rtmoe.dsp.bands")


def contract_dsp_pure(graph: ImportGraph) -> list[str]:
    """(b) rtmoe.dsp and rtmoe.signal: no model, stream, engine, transport, runtime; no
    torch outside the torch front end ``TORCH_DSP``."""
    dsp_or_signal = lambda m: in_package(m, "rtmoe.dsp", "rtmoe.signal")  # noqa: E731
    return violations(graph, dsp_or_signal, lambda m: in_package(m, *DSP_FORBIDDEN)) + violations(
        graph,
        lambda m: dsp_or_signal(m) and not in_package(m, *TORCH_DSP),
        lambda m: in_package(m, "torch"),
    )


def contract_stream_engine_apart(graph: ImportGraph) -> list[str]:
    """(c) rtmoe.stream and rtmoe.engine never import each other."""
    return violations(
        graph, lambda m: in_package(m, "rtmoe.stream"), lambda m: in_package(m, "rtmoe.engine")
    ) + violations(
        graph, lambda m: in_package(m, "rtmoe.engine"), lambda m: in_package(m, "rtmoe.stream")
    )


def contract_satellites_not_runtime(graph: ImportGraph) -> list[str]:
    """(d) rtmoe.offline and rtmoe.calibration never import rtmoe.runtime."""
    return violations(
        graph,
        lambda m: in_package(m, "rtmoe.offline", "rtmoe.calibration"),
        lambda m: in_package(m, "rtmoe.runtime"),
    )


def contract_no_cycles(graph: ImportGraph) -> list[str]:
    """(e) no cycles among module-top-level imports."""
    return [" -> ".join(cycle) for cycle in graph.cycles()]


def contract_packages_listed(root: Path = ROOT) -> list[str]:
    """(f) every package folder is in pyproject's [tool.setuptools] packages."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    package_dir = setuptools.get("package-dir", {})
    assert {package_dir.get(v, "") for v in FOLDERS.values()} == set(FOLDERS), (
        f"pyproject package-dir {package_dir} no longer maps the folders as {FOLDERS}"
    )
    missing = []
    for folder in FOLDERS:
        for init in sorted((root / folder).rglob("__init__.py")):
            name, _ = module_name(init, root)
            if name not in listed:
                missing.append(f"{name} ({init.parent.relative_to(root)}/)")
    return missing


def _report(title: str, found: list[str]) -> str:
    return f"{title}:\n" + "\n".join(found)


def test_trunk_never_imports_offline_calibration_plugins(graph):
    found = contract_trunk_independent(graph)
    assert not found, _report("the trunk imports a satellite package", found)


def test_dsp_and_signal_import_no_model_stream_engine_transport_runtime_torch(graph):
    found = contract_dsp_pure(graph)
    assert not found, _report("rtmoe.dsp/rtmoe.signal import a forbidden layer", found)


def test_stream_and_engine_meet_only_in_runtime(graph):
    found = contract_stream_engine_apart(graph)
    assert not found, _report("rtmoe.stream and rtmoe.engine import each other", found)


def test_offline_and_calibration_never_import_runtime(graph):
    found = contract_satellites_not_runtime(graph)
    assert not found, _report("offline/calibration import rtmoe.runtime", found)


def test_no_import_cycles_at_module_top_level(graph):
    found = contract_no_cycles(graph)
    assert not found, _report("import cycles (module-top-level imports)", found)


def test_every_package_folder_is_listed_in_pyproject():
    missing = contract_packages_listed()
    assert not missing, (
        "package folders missing from pyproject [tool.setuptools] packages (they would not "
        "be installed): " + ", ".join(missing)
    )


# -- the contracts can fail ----------------------------------------------------------------


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in FOLDERS:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    return tmp_path


BAD_TREE = {
    "rtmoe/cli.py": "def main():\n    from rtmoe.plugins import stages\n",
    "plugins/stages.py": "",
    "rtmoe/dsp/__init__.py": "",
    "rtmoe/dsp/filters.py": "def f():\n    import torch.nn\n",
    "rtmoe/signal/__init__.py": "from .chain import x\n",
    "rtmoe/signal/chain.py": "from ..models import registry\nx = 1\n",
    "rtmoe/models/__init__.py": "",
    "rtmoe/models/registry.py": "",
    "rtmoe/stream/__init__.py": "",
    "rtmoe/stream/player.py": "import rtmoe.cli\nfrom rtmoe.engine.base import E\n",
    "rtmoe/engine/__init__.py": "",
    "rtmoe/engine/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
    "    from rtmoe.stream import player\nE = 1\n",
    "rtmoe/a.py": "import rtmoe.b\n",
    "rtmoe/b.py": "try:\n    from rtmoe import c\nexcept ImportError:\n    pass\n",
    "rtmoe/c.py": "from . import a\n",
    "rtmoe/lazy1.py": "import rtmoe.lazy2\n",
    "rtmoe/lazy2.py": "def f():\n    import rtmoe.lazy1\n",
    "calibration/epochs.py": "from rtmoe.runtime.preprocess import P\n",
    "rtmoe/runtime/__init__.py": "",
    "offline/extra/__init__.py": "",
    "pyproject.toml": "[tool.setuptools]\n"
    'package-dir = { "rtmoe" = "rtmoe", "rtmoe.offline" = "offline", '
    '"rtmoe.calibration" = "calibration", "rtmoe.plugins" = "plugins" }\n'
    'packages = ["rtmoe", "rtmoe.dsp", "rtmoe.signal", "rtmoe.models", "rtmoe.stream", '
    '"rtmoe.engine", "rtmoe.runtime", "rtmoe.offline", "rtmoe.calibration", '
    '"rtmoe.plugins"]\n',
}


def test_each_contract_catches_a_violation(tmp_path):
    root = _fake_tree(tmp_path, BAD_TREE)
    bad = ImportGraph.from_tree(root)

    (trunk,) = contract_trunk_independent(bad)  # rtmoe.cli directly, the player through it
    assert trunk.startswith(
        "rtmoe.cli imports rtmoe.plugins.stages (also reached from rtmoe.stream.player):"
    )
    assert "rtmoe/cli.py:2 (inside a function)" in trunk

    models, torch = contract_dsp_pure(bad)
    assert models.startswith(
        "rtmoe.signal.chain imports rtmoe.models.registry (also reached from rtmoe.signal):"
    )
    assert torch.startswith("rtmoe.dsp.filters imports torch:")  # lazily, still forbidden

    (apart,) = contract_stream_engine_apart(bad)  # engine -> stream is TYPE_CHECKING only
    assert apart.startswith("rtmoe.stream.player imports rtmoe.engine")

    (runtime,) = contract_satellites_not_runtime(bad)
    assert runtime.startswith("rtmoe.calibration.epochs imports rtmoe.runtime.preprocess")

    # a -> b -> c -> a through a try: block and a relative import; lazy1 <-> lazy2 is
    # broken by a function-level import, so it is no cycle.
    assert contract_no_cycles(bad) == ["rtmoe.a -> rtmoe.b -> rtmoe.c -> rtmoe.a"]

    assert contract_packages_listed(root) == ["rtmoe.offline.extra (offline/extra/)"]


def test_module_names_follow_package_dir():
    assert module_name(ROOT / "offline" / "corpus" / "cli.py") == (
        "rtmoe.offline.corpus.cli",
        False,
    )
    assert module_name(ROOT / "plugins" / "__init__.py") == ("rtmoe.plugins", True)
    assert module_name(ROOT / "rtmoe" / "stream" / "player.py") == ("rtmoe.stream.player", False)


# -- the CLI's front door stays light ------------------------------------------------------

PROBE = """
import contextlib, io, sys
from rtmoe.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main([{flag!r}])
    except SystemExit as stop:
        assert stop.code == 0, stop.code
heavy = ("torch", "numpy", "scipy", "mne", "zmq", "pylsl", "rtmoe.engine", "rtmoe.models",
         "rtmoe.stream", "rtmoe.runtime", "rtmoe.signal")
assert out.getvalue(), "nothing printed"
print(repr(sorted(m for m in heavy if m in sys.modules)))
"""


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_cli_help_and_version_import_no_torch(flag, tmp_path):
    # The console script `rtmoe` ([project.scripts]) is `rtmoe.cli:main`; this runs the
    # same function in a fresh interpreter and looks at what it imported. cwd is not the
    # repository, whose ignored build leftover rtmoe.egg-info/ could shadow the installed
    # entry points (the console script never has the cwd on sys.path either).
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(flag=flag)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", (
        f"`rtmoe {flag}` imported heavy modules: {done.stdout.strip()}"
    )


def _command_entry_points() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"]["rtmoe.commands"]


@pytest.mark.parametrize("name", sorted(_command_entry_points()))
def test_command_entry_points_are_light_stubs_of_real_commands(name):
    import importlib

    from rtmoe.command import Command, LazyCommand

    module_name, _, attribute = _command_entry_points()[name].partition(":")
    stub = getattr(importlib.import_module(module_name), attribute)
    assert isinstance(stub, LazyCommand), f"{name}: the entry point must name a LazyCommand"
    # The stub's module imports nothing but rtmoe.command (contract for `rtmoe --help`).
    stub_imports = {e.target for e in ImportGraph.from_tree().edges[module_name]}
    assert stub_imports == {"rtmoe.command"}, (module_name, stub_imports)
    real = stub.load()
    assert isinstance(real, Command), f"{name}: {stub.target} is not a Command"
    assert stub.help == real.help, (
        f"{name}: the help line in {module_name} differs from {stub.target}'s; keep them equal"
    )
