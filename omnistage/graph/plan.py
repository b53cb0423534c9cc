"""The immutable plan a graph compiles to. Nothing here changes after compile."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from omnistage.errors import RequestRejected
from omnistage.graph.kinds import KindSpec, PortSpec
from omnistage.graph.params import ParamSpec
from omnistage.graph.schema import GraphConfig, StageConfig

REQUEST = "request"


@dataclass(frozen=True)
class Edge:
    """``src_stage == "request"`` means the value comes from the request itself."""

    src_stage: str
    src_port: str
    dst_stage: str
    dst_port: str
    # A streamed hand-off: the source emits deltas and the destination takes them while the
    # source still runs (both ports are streaming).
    stream: bool = False

    def __str__(self) -> str:
        return f"{self.src_stage}.{self.src_port} -> {self.dst_stage}.{self.dst_port}"


@dataclass(frozen=True)
class ReplicaSlot:
    stage: str
    index: int
    device: str
    threads: int
    group: str | None = None  # a modality group of the stage (see ResourcesConfig.groups)


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: KindSpec
    config: StageConfig
    options: Any
    model_path: str | None  # resolved; "tiny:<name>" stays symbolic until a worker loads it
    model_dtype: str
    inputs: tuple[PortSpec, ...]
    outputs: tuple[PortSpec, ...]
    in_edges: tuple[Edge, ...]
    # stage port -> response modality it feeds
    response: Mapping[str, str]
    # Output ports something consumes (a later stage or the response); set once edges are known.
    used_outputs: frozenset[str] = frozenset()
    # The request parameters this stage reads (its kind's, or for a python stage its options').
    params: tuple[ParamSpec, ...] = ()
    model_component: str | None = None  # a sub-model of the checkpoint (models.<name>.component)

    def output(self, port: str) -> PortSpec:
        return next(p for p in self.outputs if p.name == port)


def diffusion_roles(stage: StagePlan) -> set[str]:
    """The parts of a diffusers pipeline a text_encode, diffusion or vae_decode stage runs: "text"
    (its text encoders), "denoise" (the transformer or UNet), "vae" (decodes, or encodes input
    images). A diffusion stage encodes its own prompt when one reaches its ``prompt`` port."""
    if stage.kind.name == "text_encode":
        return {"text"}
    if stage.kind.name == "vae_decode":
        return {"vae"}
    roles = {"denoise"}
    if any(p.name == "prompt" for p in stage.inputs) and any(e.dst_port == "prompt" for e in stage.in_edges):
        roles.add("text")
    if {"image", "video"} & stage.used_outputs or any(e.dst_port == "image" for e in stage.in_edges):
        roles.add("vae")
    return roles


@dataclass(frozen=True)
class Route:
    """What one kind of request visits: stages (in topological order) and the live edges."""

    fields: frozenset[str]
    modalities: frozenset[str]
    stages: tuple[str, ...]
    edges: tuple[Edge, ...]
    # stage -> its input ports that will receive a value on this route
    expect: Mapping[str, tuple[str, ...]]
    # modality -> (stage, port) producing it
    produces: Mapping[str, tuple[str, str]]

    def out_edges(self, stage: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.src_stage == stage)


@dataclass(frozen=True)
class GraphPlan:
    name: str
    config: GraphConfig
    stages: Mapping[str, StagePlan]
    order: tuple[str, ...]
    edges: tuple[Edge, ...]
    routes: Mapping[tuple[frozenset[str], frozenset[str]], Route]
    placement: Mapping[str, tuple[ReplicaSlot, ...]]

    @cached_property
    def param_names(self) -> frozenset[str]:
        """Every request parameter some stage of the graph reads (checked on every submit: kept)."""
        return frozenset(p.name for st in self.stages.values() for p in st.params)

    @property
    def request_fields(self) -> frozenset[str]:
        return frozenset(e.src_port for e in self.edges if e.src_stage == REQUEST)

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(m for s in self.stages.values() for m in s.response.values())

    def route_for(self, fields: frozenset[str] | set[str], modalities: frozenset[str] | set[str] | None = None) -> Route:
        """The route for a request carrying ``fields`` and asking for ``modalities``.

        ``modalities=None`` asks for text where the graph can answer in text, else for every
        modality the request's inputs can reach. Raises RequestRejected (400) otherwise.
        """
        fields = frozenset(fields)
        unused = sorted(fields - self.request_fields)
        if unused:
            raise RequestRejected(
                f"graph {self.name!r} does not accept {', '.join(unused)}; "
                f"it accepts: {', '.join(sorted(self.request_fields)) or 'nothing'}", param=unused[0])
        reachable = self.reachable_modalities(fields)
        if modalities is None:
            modalities = {"text"} if "text" in reachable else reachable
        modalities = frozenset(modalities)
        route = self.routes.get((fields, modalities))
        if route is None or not modalities:
            offered = ", ".join(sorted(reachable)) or "none"
            raise RequestRejected(
                f"graph {self.name!r} cannot produce {', '.join(sorted(modalities)) or 'anything'} from "
                f"{', '.join(sorted(fields)) or 'an empty request'}; for these inputs it offers: {offered}",
                param="modalities")
        return route

    def unit(self, stage: str, group: str | None) -> str:
        """What the elastic controller sizes: a stage, or one modality group of it ("stage/group")."""
        return f"{stage}/{group}" if group is not None and self.stages[stage].config.resources.groups else stage

    def units(self) -> list[str]:
        return [self.unit(stage, group) for stage in self.order
                for group in self.stages[stage].config.resources.group_ranges()]

    def reachable_modalities(self, fields: frozenset[str]) -> frozenset[str]:
        return frozenset(m for (f, ms) in self.routes if f == fields for m in ms)
