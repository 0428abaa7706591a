"""The package's layering, checked on its import graph: no import cycles and no import from
a lower layer into a higher one, counting the imports written inside functions too.

The graph is read from the source (`ast`): every `import` and `from ... import` of a
`distill` module, at module level or in a function body (`if TYPE_CHECKING:` blocks are
not imports). The layers are those `distill/__init__.py` describes; each module belongs to
the layer of its longest listed prefix.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        [
            "distill.core",
            "distill.schemes.table",
            "distill.schemes.spec",
            "distill.losses.table",
            "distill.compress.structure",
        ],
    ),
    (
        "knowledge",
        [
            "distill.losses",
            "distill.taps",
            "distill.objective",
            "distill.models",
            "distill.data",
            "distill.metrics",
            "distill.evaluate",
            "distill.robustness",
            "distill.profile",
            "distill.compress",
            "distill.dense.detection",
        ],
    ),
    (
        "schemes",
        [
            "distill.schemes",
            "distill.llm",
            "distill.llm.embed",
            "distill.llm.mlm",
            "distill.dense",
            "distill.diffusion",
            "distill.paradigms",
        ],
    ),
    ("loop", ["distill.loop"]),
    (
        "app",
        [
            "distill",
            "distill.__main__",
            "distill.app",
            "distill.compress.pipeline",
            "distill.compress.search",
            "distill.compress.plan",
            "distill.compress.export",
            "distill.llm.demo",
            "distill.paradigms.federated",
            "distill.paradigms.interpret",
            "distill.paradigms.lifelong",
        ],
    ),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "distill").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The distill modules `path` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and isinstance(child.test, ast.Name)
                and child.test.id == "TYPE_CHECKING"
            ):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([child.module] if child.module else []))
                for a in child.names:
                    full = f"{base}.{a.name}"
                    found.add(full if full in known else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _layer(module: str) -> int:
    best = None
    for i, (_name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state:
                found = walk(w)
                if found:
                    return found
        state[v] = 2
        path.pop()
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in state:
            found = walk(v)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_layer():
    graph = _graph()
    upward = [
        f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if _layer(b) > _layer(a)
    ]
    assert not upward, "imports into a higher layer:\n" + "\n".join(upward)


# The registries: tables that name their entries as "module:attr" strings, imported by
# name on first use (`distill.core.registry.resolve`). An entry may live in any layer: the
# table's module never imports it, the application asks for it by name at run time. This
# is how a domain plugs in without a lower layer importing it (distill/__init__.py).
REGISTRIES = {
    "distill.losses.table",  # LOSSES and DIVERGENCES: every loss and token divergence
    "distill.schemes.table",  # SCHEMES: every scheme, by name
    "distill.models",  # MODELS: the model builders, by name
    "distill.data.sources",  # DATASETS: the data loaders, by name
}
_REF = re.compile(r"^(distill(?:\.\w+)+):(\w+)$")


def _string_refs(path: Path) -> list[tuple[str, str]]:
    """Every "distill.module:attr" string in the module's source."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _REF.match(node.value)
            if match:
                found.append((match.group(1), match.group(2)))
    return found


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_string_references_are_imports_too_and_only_registries_point_upward():
    """A "module:attr" string is an import made later: outside the registries it obeys the
    layer rule like an import statement (issue 43), and every one names a module file that
    defines the attribute (checked from the source, without importing it)."""
    known = _modules()
    upward, broken, count = [], [], 0
    for name, path in known.items():
        for module, attr in _string_refs(path):
            count += 1
            if module not in known:
                broken.append(f"{name}: {module}:{attr} (no such module)")
            elif attr not in _top_level_names(known[module]):
                broken.append(f"{name}: {module}:{attr} (no such name there)")
            elif name not in REGISTRIES and _layer(module) > _layer(name):
                upward.append(f"{name} names {module}:{attr}")
    assert count > 100  # the tables are read at all
    assert not broken, "string references that do not resolve:\n" + "\n".join(broken)
    assert not upward, "string references into a higher layer:\n" + "\n".join(upward)


def test_the_string_reference_check_sees_a_broken_or_upward_one(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('TABLE = {"a": "distill.loop.trainer:Trainer", "b": "not a ref"}\n')
    assert _string_refs(src) == [("distill.loop.trainer", "Trainer")]
    assert "Trainer" in _top_level_names(_modules()["distill.loop.trainer"])
    assert "Nope" not in _top_level_names(_modules()["distill.loop.trainer"])


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    """The checker itself: an import inside a function counts, and a cycle is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from distill.loop.trainer import Trainer\n")
    assert _imports(src, "distill.x", {"distill.loop.trainer": src, "distill.x": src}) == {
        "distill.loop.trainer"
    }
    assert _layer("distill.loop.trainer") > _layer("distill.losses.response")


@pytest.mark.parametrize(
    "args", [["--help"], ["methods"], ["schemes"]], ids=["help", "methods", "schemes"]
)
def test_catalogue_commands_answer_without_importing_torch(args):
    code = (
        "import sys\nfrom distill.app.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


def test_every_domain_module_imports_on_its_own():
    """Modules that once formed an import cycle import first, alone, in a fresh process."""
    names = [
        "distill.llm.embed",
        "distill.llm.mlm",
        "distill.llm.scheme",
        "distill.schemes.online",
        "distill.data.sources",
        "distill.app.stages",
        "distill.app.validate",
        "distill.loop.trainer",
    ]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    # each in its own process, all started at once (each one mostly waits on torch's import)
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", code, name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"import {name} alone failed:\n{err[-1500:]}"


def test_every_import_names_a_module_file_and_no_former_name_is_served():
    """A 0.1.0 package keeps no compatibility layer (issue 43): every `distill` import in
    the source names a module file or package, and the former flat names (`distill.run`,
    `distill.trainer`, ...) import nothing."""
    import importlib

    known = _modules()
    packages = {name.rsplit(".", 1)[0] for name in known} | set(known)
    stale = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            stale += [
                f"{name} imports {m}" for m in mods if m.startswith("distill") and m not in packages
            ]
    assert not stale, "\n".join(stale)
    for old in ("distill.run", "distill.trainer", "distill.errors", "distill.cli"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


def test_no_module_over_500_lines_and_no_function_over_60():
    """The house's size limits (docs/contributing.md): a module a reader can hold, a
    function that does one thing."""
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        if len(source.splitlines()) > 500:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, "over the limits:\n" + "\n".join(too_long)
