"""Turning an admitted request into messages: who waits for what, where outputs go.

Also the unified multimodal prefix cache's decision: when a route encodes images for an AR
stage, that stage is probed first; images whose KV it already holds are not encoded at all,
and the rest may be split across several encoder replicas and gathered again.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from omnistage.connectors.messages import Admit, Data, Dest, ImageRef
from omnistage.graph.params import check_request
from omnistage.graph.placement import gpu_device
from omnistage.graph.plan import REQUEST, GraphPlan, Route


class Target(Protocol):
    address: str
    node: str
    device: str


def probe_target(plan: GraphPlan, route: Route, inputs: Mapping[str, Any]) -> tuple[str, str] | None:
    """(encode stage, AR stage) when this request's images go through an encoder into an AR
    stage whose prefix cache may already cover them; else None."""
    if not inputs.get("images") or inputs.get("video") is not None:
        return None  # (probing covers images; a request with a video is encoded as a whole)
    for edge in route.edges:
        src = plan.stages.get(edge.src_stage)
        dst = plan.stages[edge.dst_stage]
        if (src is not None and src.kind.name == "encode" and dst.kind.probes
                and edge.dst_port == "image_embeds" and dst.options.prefix_caching):
            return edge.src_stage, edge.dst_stage
    return None


def images_by_reference(plan: GraphPlan, route: Route, ar: str,
                        images: Sequence[Any]) -> tuple[list[bytes], list[ImageRef]] | None:
    """The files (data URLs decoded) and the references a probe of ``ar`` carries instead of
    them, when its kind takes images by reference (``KindSpec.probe_by_reference``) and every
    image is a file; header-checked here, so a bad one is a 400 at submit. None: the probe
    carries the images themselves. A stage whose states a talker takes recomputes every
    position, so it gets the files."""
    function = plan.stages[ar].kind.probe_by_reference
    produced = {e.src_port for e in route.out_edges(ar)} | {port for src, port in route.produces.values() if src == ar}
    if not function or produced & {"states", "hidden"}:
        return None
    return _function(function)(images)


def _function(name: str) -> Any:
    """A kind's hook named "module:function"."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def without_stage(route: Route, stage: str) -> Route:
    edges = tuple(e for e in route.edges if stage not in (e.src_stage, e.dst_stage))
    expect = {s: tuple(sorted({e.dst_port for e in edges if e.dst_stage == s})) for s in route.stages if s != stage}
    return dataclasses.replace(route, stages=tuple(s for s in route.stages if s != stage), edges=edges,
                               expect=expect)


def split(items: Sequence[int], parts: int) -> list[list[int]]:
    """Round-robin ``items`` into at most ``parts`` non-empty groups."""
    groups = [list(items[i::parts]) for i in range(min(parts, len(items)))]
    return [g for g in groups if g]


def admission_messages(rid: str, route: Route, chosen: Mapping[str, Sequence[Target]], inputs: Mapping[str, Any],
                       params: Mapping[str, Any], sink: str, have_inputs: str | None = None,
                       image_groups: Mapping[str, list[list[int]]] | None = None) -> list[tuple[str, Any]]:
    """Admit and Data messages for every replica on the route, in sending order.

    ``chosen[stage]`` lists the replicas taking part; only a stage named in ``image_groups``
    has several (each gets its group of image indices). ``have_inputs`` names a stage that
    already holds the request's own fields (it was probed), so they are not sent again.
    """
    image_groups = image_groups or {}
    out: list[tuple[str, Any]] = []
    for stage in route.stages:
        parts = {e.dst_port: len(image_groups[e.src_stage]) for e in route.edges
                 if e.dst_stage == stage and e.src_stage in image_groups}
        dests = _dests(route, stage, chosen, sink)
        streams = sorted({e.dst_port for e in route.edges if e.dst_stage == stage and e.stream})
        for replica in chosen[stage]:
            out.append((replica.address, Admit(rid, list(route.expect[stage]), dests, dict(params), sink, parts,
                                               streams)))
    for edge in route.edges:
        if edge.src_stage != REQUEST or edge.dst_stage == have_inputs:
            continue
        value = inputs[edge.src_port]
        groups = image_groups.get(edge.dst_stage)
        if groups is None:
            out.append((chosen[edge.dst_stage][0].address, Data(rid, edge.dst_port, value)))
        else:
            for replica, group in zip(chosen[edge.dst_stage], groups):
                out.append((replica.address, Data(rid, edge.dst_port, [value[i] for i in group])))
    return out


def _dests(route: Route, stage: str, chosen: Mapping[str, Sequence[Target]], sink: str) -> dict[str, list[Dest]]:
    dests: dict[str, list[Dest]] = {}
    for edge in route.out_edges(stage):
        target = chosen[edge.dst_stage][0]
        dests.setdefault(edge.src_port, []).append(Dest(target.address, edge.dst_port, stream=edge.stream,
                                                        node=target.node, device=gpu_device(target.device) or ""))
    for modality, (src, port) in route.produces.items():
        if src == stage:
            dests.setdefault(port, []).append(Dest(sink, modality, to_response=True))
    return dests


def resolve_params(plan: GraphPlan, route: Route, infos: Mapping[str, Mapping[str, Any]],
                   params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a request's parameters before anything is sent to a stage, and resolve them.

    Every parameter must be one a stage on the route reads, of its type and in its range
    (``graph.params``). Then the route's kinds' submit-time checks (``KindSpec.check_params``)
    validate what depends on the loaded model, against the facts each stage reported when it
    started, and may fill in resolved values (defaults, a drawn seed) so that every stage sees
    the same ones. Raises RequestRejected.
    """
    check_request(params, {name: plan.stages[name].params for name in route.stages}, plan.param_names)
    resolved = {name: value for name, value in params.items() if value is not None}  # None: not given
    for name in route.stages:
        stage = plan.stages[name]
        if stage.kind.check_params:
            resolved.update(_function(stage.kind.check_params)(stage.options, infos.get(name, {}), resolved))
    return resolved
