"""The package layering ARCHITECTURE.md states, checked on the source: imports point one way and form no cycle,
no package but ``models`` names a family class, and no module is over 500 lines.

``service → export / models / video``, ``export → models``, ``training → models / video``; ``models`` and
``video`` import nothing of the others; the command line (``clipwise``) may use every package. Every import
counts, at module level or inside a function: a lazy import against the direction is still a dependency.
What the other packages need to know of a family is what its class declares (``Capabilities``) or its methods.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("service", "export", "models", "training", "video")  # each installs as clipwise.<folder>
ALLOWED = {
    "clipwise": {"clipwise", "service", "export", "models", "training", "video"},
    "service": {"service", "export", "models", "video"},
    "export": {"export", "models"},
    "training": {"training", "models", "video"},
    "models": {"models"},
    "video": {"video"},
}


def module_name(path: Path) -> str:
    """The installed name of a source file: ``models/base.py`` is ``clipwise.models.base``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts if parts[0] == "clipwise" else ("clipwise", *parts))


def package_of(module: str) -> str:
    """The layer a module belongs to: its folder, or ``clipwise`` for the command line."""
    second = module.split(".")[1] if "." in module else ""
    return second if second in FOLDERS else "clipwise"


MODULES = {module_name(path): path for package in ALLOWED for path in (ROOT / package).rglob("*.py")}


def imported_modules(path: Path) -> Iterator[str]:
    """The project modules a file imports (``from a import b`` names ``a.b`` when that is a module)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        yield from (name for name in names if name in MODULES)


GRAPH = {name: set(imported_modules(path)) - {name} for name, path in MODULES.items()}


def test_the_checker_sees_every_package_and_their_imports() -> None:
    assert {package_of(name) for name in MODULES} == set(ALLOWED)
    assert "clipwise.models.flops" in GRAPH["clipwise.models.base"]  # a known edge: the checker reads imports at all
    assert "clipwise.service.local" in GRAPH["clipwise.commands.bench"]  # inside functions too (a lazy import)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    against = sorted(
        f"{importer} -> {imported}"
        for importer, imported_set in GRAPH.items()
        if package_of(importer) == package
        for imported in imported_set
        if package_of(imported) not in ALLOWED[package]
    )
    assert not against, f"imports against the stated direction: {against}"


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component: set[str] = set()
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles() -> None:
    assert strongly_connected(GRAPH) == []


def test_the_service_imports_without_the_optional_extras() -> None:
    """The torch backend needs no extra: the app builds with onnx, ONNX Runtime, onnxscript and OpenVINO absent
    (each import of them refused), as after a plain ``pip install clipwise``."""
    script = (
        "import sys\n"
        "for name in ('onnx', 'onnxruntime', 'onnxscript', 'openvino'): sys.modules[name] = None\n"
        "from clipwise.service.app import create_app\n"
        "from clipwise.service.config import Settings\n"
        "create_app(Settings())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# The family modules (one per family, as the registry loads them) and the classes of the zoo they define.
FAMILY_MODULES = tuple(
    f"clipwise.models.{name}" for name in ("tsn", "resnet3d", "x3d", "ctnet", "fusion", "adafuse", "ada3d")
)
# A family's training objective (``Capabilities.objective`` names it) and the fusion template's strategy ranking
# are the training half of one family: they may name its class.
SCRIPT_FOLDERS = ("benchmarks", "scripts")
FAMILY_TRAINING = {
    "clipwise.training.train_adafuse",
    "clipwise.training.train_ada3d",
    "clipwise.training.train_fusion",
    "clipwise.training.fusion_ranking",
}


def family_classes() -> dict[str, set[str]]:
    """Per family module, the ``VideoClassifier`` subclasses it defines."""
    from clipwise.models.base import VideoClassifier

    classes: dict[str, set[str]] = {}
    for name in FAMILY_MODULES:
        members = inspect.getmembers(importlib.import_module(name), inspect.isclass)
        classes[name] = {
            cls.__name__ for _, cls in members if cls.__module__ == name and issubclass(cls, VideoClassifier)
        }
    return classes


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def family_references(source: str, classes: dict[str, set[str]]) -> list[str]:
    """Every import of a family class from its module, and every attribute reference to one through a name
    bound to a family module (``import clipwise.models.adafuse as m; m.AdaFuse``, ``clipwise.models.tsn.TSN``)."""
    tree = ast.parse(source)
    modules = {name: name for name in classes}  # local names bound to a family module
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name in classes.get(node.module, ()):
                    found.append(f"{node.module}.{alias.name}")
                if f"{node.module}.{alias.name}" in classes:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            modules |= {alias.asname: alias.name for alias in node.names if alias.asname and alias.name in classes}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (owner := dotted(node.value)) in modules:
            if node.attr in classes[modules[owner]]:
                found.append(f"{modules[owner]}.{node.attr}")
    return found


def test_the_family_checker_finds_family_classes() -> None:
    classes = family_classes()
    from clipwise.models.registry import FAMILY_MODULES as registered

    assert set(FAMILY_MODULES) == set(registered)  # every family the registry loads is checked
    assert {"AdaFuse", "TSN"} <= classes["clipwise.models.adafuse"] | classes["clipwise.models.tsn"]
    bad = {
        "from clipwise.models.adafuse import AdaFuse": ["clipwise.models.adafuse.AdaFuse"],
        "import clipwise.models.ada3d as m\nm.Ada3D": ["clipwise.models.ada3d.Ada3D"],
        "import clipwise.models.tsn\nclipwise.models.tsn.TSN": ["clipwise.models.tsn.TSN"],
        "from clipwise.models import fusion\nisinstance(x, fusion.FusionTemplate)": [
            "clipwise.models.fusion.FusionTemplate"
        ],
    }
    for snippet, expected in bad.items():
        assert family_references(snippet, classes) == expected, snippet
    good = "from clipwise.models.ada3d import Plan\nfrom clipwise.models import adafuse\nadafuse.KEEP\nx.AdaFuse"
    assert family_references(good, classes) == []


def test_no_package_but_models_names_a_family_class() -> None:
    """Nor do the benchmarks and scripts, which run on the same interface."""
    classes = family_classes()
    sources = {name: path for name, path in MODULES.items() if package_of(name) != "models"}
    sources |= {str(path.relative_to(ROOT)): path for folder in SCRIPT_FOLDERS for path in (ROOT / folder).glob("*.py")}
    found = {
        name: references
        for name, path in sources.items()
        if name not in FAMILY_TRAINING
        if (references := family_references(path.read_text(), classes))
    }
    assert not found, f"family classes named outside models/ (declare a capability instead): {found}"


MAX_MODULE_LINES = 500


def test_no_module_is_over_500_lines() -> None:
    """A module past 500 lines holds more than one job: split it by job. The modules grpcio-tools generates
    (``*_pb2*.py``) are not written by hand and do not count."""
    too_long = sorted(
        f"{name} ({lines} lines)"
        for name, path in MODULES.items()
        if not path.match("*_pb2*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    )
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"
