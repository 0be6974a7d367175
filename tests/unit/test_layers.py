"""The layers import one way: no cycles, and no arrow from a lower layer to a higher one.

Imports are read from the source (those inside functions too; ``if TYPE_CHECKING:`` blocks
excepted), so a lazy import cannot hide a backward arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module may import modules of its own layer or of lower ones only.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # vocabulary every process shares; imports nothing of rayr above it
    ("common", ("rayr.config", "rayr.accelerators", "rayr.exceptions", "rayr.ids", "rayr.keys",
                "rayr.resources", "rayr.task_spec", "rayr.serialization", "rayr.scheduling_strategies",
                "rayr.private_files", "rayr.procs", "rayr.session", "rayr.log_stream", "rayr.protocol",
                "rayr.log_config")),
    # the GCS tables, object stores, runtime envs, starting cluster processes
    ("services", ("rayr.gcs", "rayr.object_store", "rayr.backends", "rayr.runtime_env", "rayr.node",
                  "rayr.job_submission.status")),
    # what drivers and workers run: ownership, submission, execution
    ("core", ("rayr.context", "rayr.object_ref", "rayr.core", "rayr.routing",
              "rayr.streaming", "rayr.worker")),
    # the other process kinds: raylet, head monitor, job supervisor, autoscaler
    ("daemons", ("rayr.raylet", "rayr.monitor", "rayr.job_submission.supervisor", "rayr.autoscaler")),
    # what users import
    ("api", ("rayr", "rayr._raylet", "rayr.api", "rayr.actor", "rayr.remote_function", "rayr.placement_group",
             "rayr.util", "rayr.experimental", "rayr.job_submission", "rayr.autoscaler.sdk", "rayr.testing",
             "rayr.mypy_plugin")),
    # tools over a running cluster: the command line and the dashboard
    ("cli", ("rayr.cli", "rayr.dashboard")),
]
# arrows the ranks allow but the design does not: core and daemons are separate process kinds
FORBIDDEN = [
    ("rayr.raylet", "rayr.core"),
    ("rayr.monitor", "rayr.core"),
    ("core", "daemons"),
]
# the zygote forks workers, so it preloads the worker's code
ALLOWED = {
    ("rayr.raylet.zygote", "rayr.worker.executor"),
    ("rayr.raylet.zygote", "rayr.worker.actor_runtime"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "rayr").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "backends").glob("*.py"):  # installed as rayr.backends
        name = "rayr.backends" if path.stem == "__init__" else f"rayr.backends.{path.stem}"
        out[name] = path
    return out


MODULES = _modules()


def _named(node: ast.Import | ast.ImportFrom, name: str, path: Path) -> list[str]:
    """What one import statement of module ``name`` names (absolute, maybe not modules)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]


def _imports(name: str, path: Path) -> set[str]:
    """The rayr modules ``name`` imports anywhere but under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _named(node, name, path):
                    while target and target not in MODULES:  # a name inside a module
                        target = target.rpartition(".")[0]
                    if target.startswith("rayr") and target != name:
                        found.add(target)
            visit([child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)])

    visit(ast.parse(path.read_text()).body)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> str:
    """The layer whose longest prefix names ``module``."""
    best, length = "", -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    assert best, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


RANK = {layer: i for i, (layer, _) in enumerate(LAYERS)}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            connect(module)
    assert not cycles, f"import cycles: {cycles}"


def _matches(module: str, rule: str) -> bool:
    if rule in RANK:
        return layer_of(module) == rule
    return module == rule or module.startswith(rule + ".")


def test_arrows_point_down():
    wrong = []
    for module, imported in sorted(GRAPH.items()):
        for target in sorted(imported):
            if (module, target) in ALLOWED:
                continue
            if RANK[layer_of(target)] > RANK[layer_of(module)]:
                wrong.append(f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})")
            for source, dest in FORBIDDEN:
                if _matches(module, source) and _matches(target, dest):
                    wrong.append(f"{module} -> {target} (forbidden: {source} -> {dest})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module, target", [
    ("rayr.gcs.client", "rayr.raylet.scheduler"),  # gcs never imports the raylet
    ("rayr.core.core_worker", "rayr.api"),  # core never imports the API
    ("rayr.raylet.raylet", "rayr.actor"),  # the raylet never imports the API
    ("rayr.resources", "rayr.gcs.client"),  # the vocabulary imports nothing above it
])
def test_the_rules_catch_a_backward_arrow(module, target):
    backward = RANK[layer_of(target)] > RANK[layer_of(module)]
    forbidden = any(_matches(module, s) and _matches(target, d) for s, d in FORBIDDEN)
    assert backward or forbidden
