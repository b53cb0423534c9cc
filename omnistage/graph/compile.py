"""GraphConfig -> GraphPlan: ports and edges checked, cycles rejected, routes precomputed.

Model references (``models.<name>.path``) are resolved by the ``ModelResolver`` the caller hands
in (``omnistage.checkpoints.resolve_model``): the graph knows nothing about checkpoints.
"""
from __future__ import annotations

import importlib.util

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from omnistage.ar_engine.config import EngineConfig
from omnistage.diffusion.lora_files import resolve_loras
from omnistage.errors import ConfigIssue, GraphConfigError
from omnistage.graph.kinds import registry
from omnistage.graph.load import parse_graph, read_graph, source_lines, with_lines
from omnistage.graph.placement import place
from omnistage.graph.plan import REQUEST, Edge, GraphPlan, Route, StagePlan
from omnistage.graph.ports import REQUEST_FIELDS, RESPONSE_MODALITIES, compatible
from omnistage.graph.schema import GraphConfig, LauncherConfig, StageConfig
from omnistage.graph.strict import frozen_dict, suggest

# (reference as written, the graph file's directory) -> what a worker loads; raises ValueError(why not)
ModelResolver = Callable[[str, Path], str]
# (stage kind, resolved reference, component or None) -> None; raises ValueError when the kind
# cannot run that model
ModelChecker = Callable[[str, str, "str | None", int], None]  # kind, model, component, tensor_parallel
TENSOR_PARALLEL_KINDS = ("ar", "prefill", "decode")


def compile_file(path: str | Path, models: ModelResolver, check: ModelChecker | None = None) -> GraphPlan:
    path = Path(path)
    return compile_text(read_graph(path), models, base_dir=path.parent, source=str(path), check=check)


def compile_text(text: str, models: ModelResolver, base_dir: Path | None = None, source: str = "<string>",
                 check: ModelChecker | None = None) -> GraphPlan:
    """Parse and compile a graph's YAML; every error names its YAML path and line."""
    config = parse_graph(text, source)
    try:
        return compile_graph(config, models, base_dir, source, check)
    except GraphConfigError as exc:
        raise GraphConfigError(with_lines(exc.issues, source_lines(text)), source) from None


def compile_graph(config: GraphConfig, models: ModelResolver, base_dir: Path | None = None,
                  source: str = "", check: ModelChecker | None = None) -> GraphPlan:
    """``check``: refuse a model its stage's kind cannot run (``checkpoints.check_model``; it reads
    each model's config). Without it only the references are resolved."""
    issues: list[ConfigIssue] = []
    if not config.stages:
        issues.append(ConfigIssue("stages", "a graph needs at least one stage"))
    stages = {name: _stage_plan(name, st, config, base_dir or Path.cwd(), models, issues, check)
              for name, st in config.stages.items()}
    stages = {k: v for k, v in stages.items() if v is not None}
    if not issues:
        _check_edges(stages, issues)
    order: tuple[str, ...] = ()
    if not issues:
        order = _topological_order(stages, issues)
    if not issues:
        _check_dangling(stages, issues)
    placement = place(config, issues) if not issues else {}
    _check_launcher(config, issues)
    if issues:
        raise GraphConfigError(issues, source)
    stages = {name: replace(st, in_edges=_mark_streams(st)) for name, st in stages.items()}
    edges = tuple(e for name in order for e in stages[name].in_edges)
    stages = {name: replace(st, used_outputs=frozenset(st.response) | {e.src_port for e in edges if e.src_stage == name})
              for name, st in stages.items()}
    routes = _all_routes(stages, order, edges)
    return GraphPlan(config.name, config, frozen_dict(stages), order, edges,
                     frozen_dict(routes), placement)


def _stage_plan(name: str, st: StageConfig, config: GraphConfig, base_dir: Path, models: ModelResolver,
                issues: list[ConfigIssue], check: ModelChecker | None) -> StagePlan | None:
    path = f"stages.{name}"
    spec = registry()[st.kind]
    model_path, dtype, component = None, "float32", None
    if st.model is not None:
        model = config.models.get(st.model)
        if model is None:
            issues.append(ConfigIssue(f"{path}.model", f"unknown model {st.model!r}{suggest(st.model, config.models)}; "
                                                       f"models: {', '.join(config.models) or 'none declared'}"))
            return None
        try:
            model_path = models(model.path, base_dir)
        except ValueError as exc:
            issues.append(ConfigIssue(f"models.{st.model}.path", str(exc)))
            return None
        if check is not None:
            try:
                check(st.kind, model_path, model.component, st.resources.tensor_parallel)
            except ValueError as exc:
                issues.append(ConfigIssue(f"{path}.model", f"model {st.model!r}: {exc}"))
                return None
        dtype, component = model.dtype, model.component
    elif spec.needs_model:
        issues.append(ConfigIssue(f"{path}.model", f"stage kind {st.kind!r} needs a model"))
        return None
    issues += _gpu_share_issues(path, st)
    if st.resources.tensor_parallel > 1 and st.kind not in TENSOR_PARALLEL_KINDS:
        issues.append(ConfigIssue(f"{path}.resources.tensor_parallel", f"stage kind {st.kind!r} runs on one device; "
                                  f"tensor_parallel is for {', '.join(TENSOR_PARALLEL_KINDS)}"))
    inputs, outputs = spec.ports(st.options, st.inputs)
    in_edges = []
    for port, src in st.inputs.items():
        src_stage, dot, src_port = src.partition(".")
        if not dot or not src_port:
            issues.append(ConfigIssue(f"{path}.inputs.{port}", f'got {src!r}, expected "request.<field>" or "<stage>.<port>"'))
            continue
        in_edges.append(Edge(src_stage, src_port, name, port))
    response = {}
    for port, dst in st.outputs.items():
        head, dot, modality = dst.partition(".")
        if head != "response" or not dot:
            issues.append(ConfigIssue(f"{path}.outputs.{port}", f'got {dst!r}, expected "response.<modality>"'))
        elif modality not in RESPONSE_MODALITIES:
            issues.append(ConfigIssue(f"{path}.outputs.{port}", f"unknown modality {modality!r}"
                                      f"{suggest(modality, RESPONSE_MODALITIES)}; known: {', '.join(RESPONSE_MODALITIES)}"))
        else:
            response[port] = modality
    options = _with_loras(path, st.options, base_dir, issues)
    return StagePlan(name, spec, st, options, model_path, dtype, inputs, outputs, tuple(in_edges),
                     frozen_dict(response), params=spec.params_for(st.options), model_component=component)


def _with_loras(path: str, options: Any, base_dir: Path, issues: list[ConfigIssue]) -> Any:
    """A diffusion stage's LoRA files, checked and taken from the graph file's directory."""
    loras = getattr(options, "loras", None)
    if not loras:
        return options
    resolved, refused = resolve_loras(dict(loras), base_dir)
    issues += [ConfigIssue(f"{path}.options.loras.{name}", why) for name, why in refused.items()]
    return replace(options, loras=frozen_dict(resolved))


def _gpu_share_issues(path: str, st: StageConfig) -> list[ConfigIssue]:
    share = st.resources.gpu_memory_utilization
    if share is None:
        return []
    if not st.resources.device.startswith("cuda"):
        return [ConfigIssue(f"{path}.resources.gpu_memory_utilization",
                            f"is a share of a GPU; the stage runs on {st.resources.device!r}")]
    if isinstance(st.options, EngineConfig) and st.options.memory_utilization is not None:
        return [ConfigIssue(f"{path}.resources.gpu_memory_utilization",
                            "and options.memory_utilization both give the stage's share of its GPU; give one")]
    return []


def _check_edges(stages: Mapping[str, StagePlan], issues: list[ConfigIssue]) -> None:
    for name, st in stages.items():
        path = f"stages.{name}"
        in_ports = {p.name: p for p in st.inputs}
        for edge in st.in_edges:
            where = f"{path}.inputs.{edge.dst_port}"
            port = in_ports.get(edge.dst_port)
            if port is None:
                issues.append(ConfigIssue(where, f"stage kind {st.kind.name!r} has no input port {edge.dst_port!r}"
                                                 f"{suggest(edge.dst_port, in_ports)}; ports: {', '.join(in_ports)}"))
                continue
            produced = _source_type(edge, stages, where, issues)
            if produced is not None and not compatible(produced, port.type):
                issues.append(ConfigIssue(where, f"{edge.src_stage}.{edge.src_port} carries {produced}, "
                                                 f"but port {edge.dst_port!r} takes {port.type}"))
            elif produced is not None and port.streaming and not _streams(edge, stages):
                issues.append(ConfigIssue(where, f"port {edge.dst_port!r} takes a stream; "
                                                 f"{edge.src_stage}.{edge.src_port} is not streamed"))
        wired = {e.dst_port for e in st.in_edges}
        for port in st.inputs:
            if port.required and port.name not in wired:
                issues.append(ConfigIssue(f"{path}.inputs", f"required input port {port.name!r} is not connected"))
        for group in st.kind.any_of:
            if not wired & set(group):
                issues.append(ConfigIssue(f"{path}.inputs", f"connect at least one of: {', '.join(group)}"))
        out_ports = {p.name: p for p in st.outputs}
        for port, modality in st.response.items():
            if port not in out_ports:
                issues.append(ConfigIssue(f"{path}.outputs.{port}", f"stage kind {st.kind.name!r} has no output port "
                                                                    f"{port!r}{suggest(port, out_ports)}; ports: {', '.join(out_ports)}"))
            elif not compatible(out_ports[port].type, RESPONSE_MODALITIES[modality]):
                issues.append(ConfigIssue(f"{path}.outputs.{port}", f"port {port!r} carries {out_ports[port].type}, "
                                                                    f"response.{modality} needs {RESPONSE_MODALITIES[modality]}"))


def _streams(edge: Edge, stages: Mapping[str, StagePlan]) -> bool:
    src = stages.get(edge.src_stage)
    return src is not None and any(p.name == edge.src_port and p.streaming for p in src.outputs)


def _mark_streams(st: StagePlan) -> tuple[Edge, ...]:
    streamed_in = {p.name for p in st.inputs if p.streaming}
    return tuple(replace(e, stream=True) if e.dst_port in streamed_in else e for e in st.in_edges)


def _source_type(edge: Edge, stages: Mapping[str, StagePlan], where: str, issues: list[ConfigIssue]) -> str | None:
    if edge.src_stage == REQUEST:
        if edge.src_port not in REQUEST_FIELDS:
            issues.append(ConfigIssue(where, f"unknown request field {edge.src_port!r}{suggest(edge.src_port, REQUEST_FIELDS)}; "
                                             f"fields: {', '.join(REQUEST_FIELDS)}"))
            return None
        return REQUEST_FIELDS[edge.src_port]
    src = stages.get(edge.src_stage)
    if src is None:
        issues.append(ConfigIssue(where, f"unknown stage {edge.src_stage!r}{suggest(edge.src_stage, list(stages) + [REQUEST])}"))
        return None
    ports = {p.name: p for p in src.outputs}
    if edge.src_port not in ports:
        issues.append(ConfigIssue(where, f"stage {edge.src_stage!r} has no output port {edge.src_port!r}"
                                         f"{suggest(edge.src_port, ports)}; ports: {', '.join(ports)}"))
        return None
    return ports[edge.src_port].type


def _topological_order(stages: Mapping[str, StagePlan], issues: list[ConfigIssue]) -> tuple[str, ...]:
    deps = {n: {e.src_stage for e in st.in_edges if e.src_stage != REQUEST} for n, st in stages.items()}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done

    def visit(node: str, stack: list[str]) -> bool:
        if state.get(node) == 2:
            return True
        if state.get(node) == 1:
            cycle = stack[stack.index(node):] + [node]
            issues.append(ConfigIssue(f"stages.{node}.inputs", f"cycle: {' -> '.join(cycle)}"))
            return False
        state[node] = 1
        for dep in sorted(deps[node]):
            if not visit(dep, stack + [node]):
                return False
        state[node] = 2
        order.append(node)
        return True

    for name in stages:
        if not visit(name, []):
            return ()
    return tuple(order)


def with_launcher(plan: GraphPlan, launcher: LauncherConfig, source: str = "command line") -> GraphPlan:
    """``plan`` with its replicas started by ``launcher`` instead (``serve --ray``); checked as
    the graph's own ``launcher`` section is."""
    config = replace(plan.config, launcher=launcher)
    issues: list[ConfigIssue] = []
    _check_launcher(config, issues)
    placement = place(config, issues)  # (replica threads follow the launcher)
    if issues:
        raise GraphConfigError(issues, source)
    return replace(plan, config=config, placement=placement)


def _check_launcher(config: GraphConfig, issues: list[ConfigIssue]) -> None:
    """Ray settings need the Ray launcher, and the Ray launcher needs Ray installed."""
    assert not isinstance(config.launcher, str)
    if config.launcher.kind == "ray":
        if importlib.util.find_spec("ray") is None:
            issues.append(ConfigIssue("launcher", "the ray launcher needs Ray: pip install 'omnistage[ray]'"))
        return
    for name, st in config.stages.items():
        if st.resources.ray_resources:
            issues.append(ConfigIssue(f"stages.{name}.resources.ray_resources",
                                      "Ray resources place replicas on a Ray cluster: set launcher: ray (or serve --ray)"))


def _check_dangling(stages: Mapping[str, StagePlan], issues: list[ConfigIssue]) -> None:
    consumed = {e.src_stage for st in stages.values() for e in st.in_edges}
    for name, st in stages.items():
        if not st.response and name not in consumed:
            issues.append(ConfigIssue(f"stages.{name}", "its outputs go nowhere: map a port to response.<modality> "
                                                        "or use it as another stage's input"))
        if not st.in_edges:
            issues.append(ConfigIssue(f"stages.{name}.inputs", "stage has no inputs, so no request can reach it"))


def _all_routes(stages: Mapping[str, StagePlan], order: tuple[str, ...],
                edges: tuple[Edge, ...]) -> dict[tuple[frozenset[str], frozenset[str]], Route]:
    fields = sorted({e.src_port for e in edges if e.src_stage == REQUEST})
    routes = {}
    for present in _subsets(fields):
        live = _live_stages(stages, order, present)
        offered = sorted({m for s in live for m in stages[s].response.values()})
        for wanted in _subsets(offered):
            if wanted:
                routes[(present, wanted)] = _route(stages, order, present, live, wanted)
    return routes


def _live_stages(stages: Mapping[str, StagePlan], order: tuple[str, ...], present: frozenset[str]) -> set[str]:
    """Stages that can run when the request carries ``present``: required ports and groups fed."""
    live: set[str] = set()
    for name in order:
        st = stages[name]
        fed = {e.dst_port for e in st.in_edges if _edge_live(e, present, live)}
        required = all(p.name in fed for p in st.inputs if p.required)
        groups = all(fed & set(g) for g in st.kind.any_of)
        if fed and required and groups:
            live.add(name)
    return live


def _edge_live(edge: Edge, present: frozenset[str], live: set[str]) -> bool:
    return edge.src_port in present if edge.src_stage == REQUEST else edge.src_stage in live


def _route(stages: Mapping[str, StagePlan], order: tuple[str, ...], present: frozenset[str],
           live: set[str], wanted: frozenset[str]) -> Route:
    candidates: dict[str, list[tuple[str, str]]] = {m: [] for m in wanted}
    for name in order:
        for port, modality in stages[name].response.items():
            if modality in wanted and name in live:
                candidates[modality].append((name, port))
    # A modality several stages produce (progress, or audio spoken from the request or from a
    # chat's answer, or text from a text-only and a vision-language chat) comes from the producer
    # that reads the most of what the request carries (an image is not dropped on the floor by a
    # text-only model), then that adds the fewest stages to the route; on a tie, the one that
    # reads from stages the route already visits. Modalities with fewer producers choose first.
    produces: dict[str, tuple[str, str]] = {}
    for modality in sorted(wanted, key=lambda m: (len(candidates[m]), m)):
        chosen = set().union(*(_upstream(stages, live, s) for s, _ in produces.values()))
        ranked = sorted(candidates[modality], key=lambda c: (
            -len(_fields_read(stages, _upstream(stages, live, c[0]), present)),
            len(_upstream(stages, live, c[0]) - chosen), not (_upstream(stages, live, c[0]) - {c[0]}) & chosen,
            order.index(c[0])))
        if ranked:
            produces[modality] = ranked[0]
    needed = {s for s, _ in produces.values()}
    for name in reversed(order):  # pull in every live producer a needed stage reads from
        if name in needed:
            needed |= {e.src_stage for e in stages[name].in_edges
                       if e.src_stage != REQUEST and e.src_stage in live}
    visit = tuple(n for n in order if n in needed)
    route_edges = tuple(e for n in visit for e in stages[n].in_edges if _edge_live(e, present, needed))
    expect = {n: tuple(sorted({e.dst_port for e in route_edges if e.dst_stage == n})) for n in visit}
    return Route(present, wanted, visit, route_edges, frozen_dict(expect), frozen_dict(produces))


def _fields_read(stages: Mapping[str, StagePlan], names: set[str], present: frozenset[str]) -> set[str]:
    """The request fields in ``present`` that the stages ``names`` read."""
    return {e.src_port for n in names for e in stages[n].in_edges if e.src_stage == REQUEST and e.src_port in present}


def _upstream(stages: Mapping[str, StagePlan], live: set[str], name: str) -> set[str]:
    """``name`` and every live stage it reads from, transitively."""
    seen, todo = {name}, [name]
    while todo:
        for edge in stages[todo.pop()].in_edges:
            if edge.src_stage in live and edge.src_stage not in seen:
                seen.add(edge.src_stage)
                todo.append(edge.src_stage)
    return seen


def _subsets(items: Iterable[str]) -> list[frozenset[str]]:
    items = list(items)
    return [frozenset(c) for r in range(len(items) + 1) for c in itertools.combinations(items, r)]
