"""The import graph: no circle, and every import goes the way the layers allow.

Run it alone with ``./dev test tests/test_layers.py``. Every import counts, at module level or
inside a function: an import hidden in a function is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "omnistage"
ENGINES = ("omnistage.ar_engine", "omnistage.diffusion", "omnistage.encoders", "omnistage.omni", "omnistage.speech")
# Each part of omnistage, and the parts it may import (besides itself). Engines are libraries:
# they import nothing of ours but errors. The graph is pure data; it may read an engine's pure
# config module (the options a kind takes are the engine's settings), and the diffusion engine's
# torch-free check of the LoRA files a stage registers (refused at validate time), nothing else.
ALLOWED: dict[str, set[str]] = {
    "omnistage.errors": set(),
    "omnistage.examples_lib": set(),
    "omnistage.logs": set(),
    "omnistage.bench": set(),
    "omnistage.models": set(),
    **{engine: {"omnistage.errors"} for engine in ENGINES},
    "omnistage.connectors": {"omnistage.errors"},
    "omnistage.graph": {"omnistage.errors", "omnistage.ar_engine.config", "omnistage.diffusion.lora_files"},
    # The engine's pure table of config features it lacks (checked at validate time), and its pure
    # settings and shape arithmetic (the GPU budget sizes a KV cache before any engine starts), and
    # which pipeline components a diffusion family loads (the budget counts those weights only).
    "omnistage.checkpoints": {"omnistage.errors", "omnistage.graph", "omnistage.models", "omnistage.ar_engine.features",
                              "omnistage.ar_engine.config", "omnistage.ar_engine.shape", "omnistage.diffusion.registry"},
    "omnistage.stages.worker": {"omnistage.errors", "omnistage.graph", "omnistage.connectors", "omnistage.logs"},
    "omnistage.stages.kinds": {"omnistage.errors", "omnistage.graph", "omnistage.connectors", "omnistage.checkpoints",
                               "omnistage.stages.worker", *ENGINES},
    "omnistage.stages.runtime": {"omnistage.errors", "omnistage.graph", "omnistage.connectors",
                                 "omnistage.stages.worker"},
    "omnistage.stages": set(),  # the package's own __init__
    "omnistage.elastic": {"omnistage.errors", "omnistage.graph", "omnistage.stages.runtime"},
    "omnistage.pipeline": {"omnistage.errors", "omnistage.graph", "omnistage.checkpoints", "omnistage.elastic",
                           "omnistage.stages.runtime"},
    # (checkpoints: the API reads the served chat model's tokenizer for its tool-call format)
    "omnistage.api": {"omnistage.errors", "omnistage.pipeline", "omnistage.stages.runtime", "omnistage.encoders",
                      "omnistage.checkpoints"},
    "omnistage.demo": {"omnistage.checkpoints", "omnistage.graph"},
    "omnistage.cli": {"omnistage.errors", "omnistage.models", "omnistage.checkpoints", "omnistage.graph",
                      "omnistage.pipeline", "omnistage.api", "omnistage.demo", "omnistage.logs", "omnistage.bench"},
    "omnistage": {"omnistage.pipeline"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The omnistage modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("omnistage")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("omnistage"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
    return out


def part(module: str) -> str:
    """The longest key of ALLOWED that ``module`` belongs to."""
    return max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len)


def allowed(src: str, dst: str) -> bool:
    own = part(src)
    return part(dst) == own or any(dst == a or dst.startswith(a + ".") for a in ALLOWED[own])


def test_every_import_goes_the_way_the_layers_allow():
    mods = modules()
    bad = sorted(f"{src} imports {dst}" for src, path in mods.items() for dst in imports(path, set(mods))
                 if not allowed(src, dst))
    assert not bad, "\n".join(bad)


def test_there_is_no_import_circle():
    mods = modules()
    graph = {name: imports(path, set(mods)) & set(mods) for name, path in mods.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
            if dep not in state and (cycle := visit(dep, stack + [dep])):
                return cycle
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [name])):
            raise AssertionError("import circle: " + " -> ".join(cycle))


def test_what_the_api_process_loads_by_name_from_the_registry_is_torch_free():
    """Submit-time checks are named by import path in the kind registry (not seen as imports
    above) and run in the API process: they must stay pure Python."""
    import subprocess
    import sys
    from omnistage.graph.kinds import registry
    checks = sorted({k.check_params.partition(":")[0] for k in registry().values() if k.check_params})
    assert checks
    code = f"import importlib, sys; [importlib.import_module(m) for m in {checks!r}]; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    known = set(modules())
    for module in checks:
        assert imports(PACKAGE.parent / (module.replace(".", "/") + ".py"), known) <= {"omnistage.errors"}, module


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from omnistage.stages.runtime.orchestrator import Orchestrator\n")
    assert imports(path, set(modules())) == {"omnistage.stages.runtime.orchestrator"}
    assert not allowed("omnistage.ar_engine.engine", "omnistage.stages.runtime.orchestrator")
    assert allowed("omnistage.elastic.scaler", "omnistage.stages.runtime.orchestrator")
