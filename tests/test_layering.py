"""The library's layering, read from every module's imports (ast; imports inside functions count too).

One folder per concern, stacked: a package may import only packages on a lower layer (and itself),
the library never imports the command line, and no modules import each other in a loop. The layer
of each package is written down here once; a new package must be given one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "teswap"

# Lower numbers are lower layers. Same-layer packages must not import each other.
LAYERS = {
    "errors": 0,
    "hardware": 1,
    "store": 2, "precision": 2, "statistics": 2, "speed_options": 2,
    "layers": 3,
    "families": 4,
    "swap": 5,
    "distributed": 5.5,  # torchrun launches: shards a pair (swap), used by the benchmark and the checks
    "parity": 6, "benchmark": 6, "reporting": 6,
    "__init__": 7,  # the public API: swap, families and layers only
    "job": 7,
    "commands": 8,
    "cli": 9,
}
COMMAND_LINE = ("cli", "commands")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit_of(module: str) -> str:
    """The layered unit a module belongs to: its first package below teswap ("teswap" itself: __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every teswap module `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("teswap"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("teswap") and node.level == 0:
            for alias in node.names:  # `from teswap.x import y` may import the module teswap.x.y
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_package_has_a_layer():
    assert {unit_of(m) for m in MODULES} <= LAYERS.keys()


def test_the_library_never_imports_the_command_line():
    offenders = [f"{m} imports {t}" for m, targets in GRAPH.items() if unit_of(m) not in COMMAND_LINE
                 for t in targets if unit_of(t) in COMMAND_LINE]
    assert offenders == []


def test_packages_import_only_lower_layers():
    offenders = [f"{m} (layer {LAYERS[unit_of(m)]}) imports {t} (layer {LAYERS[unit_of(t)]})"
                 for m, targets in GRAPH.items() for t in targets
                 if unit_of(t) != unit_of(m) and LAYERS[unit_of(t)] >= LAYERS[unit_of(m)]]
    assert offenders == []


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if target == module or target not in GRAPH:
                continue
            if state.get(target) == 1:
                return [*path, module, target]
            if state.get(target) is None and (cycle := visit(target, [*path, module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_a_violation(tmp_path):
    """The rules above can fail: a lower layer importing a higher one is caught."""
    fake = tmp_path / "teswap" / "hardware" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from teswap.benchmark.sweep import run_sweep\n")
    targets = imports_of(fake)
    assert "teswap.benchmark.sweep" in targets
    assert LAYERS[unit_of("teswap.benchmark.sweep")] >= LAYERS["hardware"]
