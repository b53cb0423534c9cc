"""Human-readable summary of a GraphPlan (what ``omnistage validate`` prints)."""
from __future__ import annotations

from omnistage.graph.placement import free_devices
from omnistage.graph.plan import GraphPlan
from omnistage.graph.schema import SloBounds
from omnistage.graph.slo import slo_of


def describe(plan: GraphPlan) -> str:
    lines = [f"graph {plan.name!r}: {len(plan.stages)} stage(s), OK"]
    if plan.config.description:
        lines.append(f"  {plan.config.description}")
    lines.append("stages:")
    for name in plan.order:
        st = plan.stages[name]
        model = f" model={st.model_path}" if st.model_path else ""
        outs = ", ".join(f"{p.name}:{p.type}" for p in st.outputs)
        lines.append(f"  {name} [{st.kind.name}]{model} outputs({outs})")
    lines.append("edges:")
    lines += [f"  {edge}" + ("  (streamed while the source runs)" if edge.stream else "") for edge in plan.edges]
    lines += [f"  {n}.{port} -> response.{m}" for n in plan.order for port, m in plan.stages[n].response.items()]
    lines.append("routes (request fields -> modalities: stages):")
    for (fields, modalities), route in sorted(plan.routes.items(), key=lambda kv: (sorted(kv[0][0]), sorted(kv[0][1]))):
        if fields:
            lines.append(f"  {'+'.join(sorted(fields))} -> {'+'.join(sorted(modalities))}: {' -> '.join(route.stages)}")
    lines.append("placement:")
    for name in plan.order:
        for slot in plan.placement[name]:
            group = f", {slot.group} group" if slot.group else ""
            lines.append(f"  {name}[{slot.index}] on {slot.device} ({slot.threads} thread(s){group})")
    lines.append("latency SLOs (seconds from arrival):")
    for name in plan.order:
        config = plan.stages[name].config
        groups = config.slo.groups if config.slo is not None else {}
        lines.append(f"  {name}: {_bounds(slo_of(config))}"
                     + "".join(f"; {group}: {_bounds(b)}" for group, b in groups.items())
                     + ("; sheds what would queue past it (503)" if config.slo is not None and config.slo.shed else ""))
    elastic = plan.config.elastic
    if elastic is not None:
        free = free_devices(plan.config, plan.placement)
        lines.append(f"elastic: {'on' if elastic.enabled else 'off'}, every {elastic.interval_s:g} s; "
                     f"free devices: {', '.join(free) or 'none'}")
        for name in plan.order:
            for group, (lo, hi, _) in plan.stages[name].config.resources.group_ranges().items():
                lines.append(f"  {name}{'/' + group if group else ''}: {lo}..{hi} replicas")
    return "\n".join(lines)


def _bounds(bounds: SloBounds) -> str:
    shown = [f"{name[:-2]} {value:g}" for name, value in (("ttft_s", bounds.ttft_s), ("ttfp_s", bounds.ttfp_s),
                                                          ("e2e_s", bounds.e2e_s)) if value is not None]
    return ", ".join(shown) or "none"
