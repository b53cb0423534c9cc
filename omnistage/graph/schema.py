"""The YAML graph schema: one frozen dataclass per section; unknown keys are rejected.

Derived values are properties. Anything discovered at run time (devices found, addresses,
KV blocks) lives in the plan or the runtime replica table, never here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from omnistage.graph.strict import frozen_dict

DType = Literal["auto", "float32", "float16", "bfloat16"]


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """A checkpoint: a local directory, ``tiny:<name>`` for a generated tiny model, or a hub id.
    ``dtype: auto`` loads it in the dtype it was saved in. ``component`` names one sub-model of a
    checkpoint that holds several (Qwen2.5-Omni's ``thinker``, ``talker``, ``token2wav``, as
    released in one directory): it loads from its sub-config and its share of the weights."""

    path: str
    dtype: DType = "auto"
    component: str | None = None


@dataclass(frozen=True)
class BatchingConfig:
    """``max_batch``: requests per engine step; ``queue_depth``: requests admitted per replica
    (waiting or running) before new ones are refused with 429."""

    max_batch: int = 8
    queue_depth: int = 256

    def __post_init__(self) -> None:
        _positive("max_batch", self.max_batch)
        _positive("queue_depth", self.queue_depth)


@dataclass(frozen=True)
class ReplicaRange:
    """``replicas: {min, max, initial}``: the elastic controller keeps the count in [min, max]."""

    min: int = 1
    max: int = 1
    initial: int | None = None  # default: min

    def __post_init__(self) -> None:
        _positive("min", self.min, allow_zero=True)
        _positive("max", self.max)
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must be between min and max")


GROUPS = ("text", "multimodal")


def _range(r: int | ReplicaRange) -> tuple[int, int, int]:
    if isinstance(r, int):
        return r, r, r
    return r.min, r.max, r.initial if r.initial is not None else max(1, r.min)


@dataclass(frozen=True)
class ResourcesConfig:
    """Where the stage's replicas run. ``threads: 0`` shares the CPU cores by load (a busy
    replica takes what idle ones leave; see ``stages/worker/cores.py``); N fixes them at N.
    ``replicas`` is a count, or ``{min, max, initial}`` for an elastic stage."""

    device: str = "cpu"
    replicas: int | ReplicaRange = 1
    threads: int = 0
    # Modality groups of one stage (as in ElasticMM): "text" replicas take text-only requests,
    # "multimodal" ones requests with images, video or audio; each group has its own range and
    # the controller sizes them separately. Replaces ``replicas`` when given.
    groups: Mapping[str, int | ReplicaRange] = field(default_factory=frozen_dict)
    # On Ray (``launcher: ray``): custom resources each replica asks for, which pin the stage to
    # the nodes that offer them (``{diffusion_node: 1}`` on nodes started with that resource).
    ray_resources: Mapping[str, float] = field(default_factory=frozen_dict)
    # ar/prefill/decode: one replica as this many ranks (processes, each with its own device and
    # ``threads``), the model's attention heads and MLP split across them.
    tensor_parallel: int = 1
    # On a GPU: the share of its memory each replica (each rank) may use, weights, activations
    # and caches together; a KV cache grows into the rest. Unset: the replicas on a card divide
    # what the set ones leave of 0.9, in proportion to their needs (graph/gpu_budget.py).
    gpu_memory_utilization: float | None = None

    def __post_init__(self) -> None:
        _positive("tensor_parallel", self.tensor_parallel)
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name, amount in self.ray_resources.items():
            _positive(f"ray_resources.{name}", amount)
            if name in ("CPU", "GPU"):
                raise ValueError(f"ray_resources.{name}: CPUs and GPUs come from threads and device, "
                                 "not custom resources")
        if isinstance(self.replicas, int):
            _positive("replicas", self.replicas)
        _positive("threads", self.threads, allow_zero=True)
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r}; groups are {', '.join(GROUPS)}")

    def group_ranges(self) -> dict[str | None, tuple[int, int, int]]:
        """group (None: the stage as a whole) -> (min, max, initial) replicas."""
        if not self.groups:
            return {None: (self.min_replicas, self.max_replicas, self.initial_replicas)}
        return {g: _range(r) for g, r in self.groups.items()}

    @property
    def initial_replicas(self) -> int:
        if self.groups:
            return sum(_range(r)[2] for r in self.groups.values())
        return _range(self.replicas)[2]

    @property
    def min_replicas(self) -> int:
        return self.replicas if isinstance(self.replicas, int) else self.replicas.min

    @property
    def max_replicas(self) -> int:
        return self.replicas if isinstance(self.replicas, int) else self.replicas.max


@dataclass(frozen=True)
class ElasticConfig:
    """Devices follow the load. ``devices`` is the pool stages draw from (``cpu`` slots of
    ``threads`` each, or ``cuda:N``); the controller runs every ``interval_s`` with the policy's
    settings (see omnistage.elastic.policy). ``enabled: false`` keeps the initial placement."""

    enabled: bool = True
    devices: tuple[str, ...] = ()
    threads: int = 1
    interval_s: float = 1.0
    high_delay_s: float = 2.0
    low_delay_s: float = 0.2
    patience: int = 2
    cooldown_s: float = 10.0
    reload_s: float = 10.0
    horizon_s: float = 15.0
    target_utilization: float = 0.8
    rate_window_s: float = 20.0
    min_gain: float = 100.0
    min_goodput_gain: float = 50.0

    def __post_init__(self) -> None:
        for name in ("interval_s", "high_delay_s", "horizon_s", "target_utilization", "threads", "patience",
                     "rate_window_s"):
            _positive(name, getattr(self, name))
        for name in ("low_delay_s", "cooldown_s", "reload_s", "min_gain", "min_goodput_gain"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.low_delay_s >= self.high_delay_s:
            raise ValueError("low_delay_s must be below high_delay_s")


@dataclass(frozen=True)
class SloBounds:
    """Latency bounds of a request, in seconds from its arrival at the graph: ``ttft_s`` to its
    first output, ``ttfp_s`` to its first audio, ``e2e_s`` to its last output. A request meets
    them when each bound given holds (a bound on an output it never gave is checked at its end)."""

    e2e_s: float | None = None
    ttft_s: float | None = None
    ttfp_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("e2e_s", "ttft_s", "ttfp_s"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))


@dataclass(frozen=True)
class SloConfig(SloBounds):
    """A stage's latency objective (omnistage.graph.slo has the defaults), with ``groups``
    overriding it per modality group (``{multimodal: {e2e_s: 4.0}}``). ``shed``: refuse (503) at
    admission a request that would queue past its bounds (omnistage.stages.runtime.shedding)."""

    groups: Mapping[str, SloBounds] = field(default_factory=frozen_dict)
    shed: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r}; groups are {', '.join(GROUPS)}")


@dataclass(frozen=True)
class StageConfig:
    kind: str
    model: str | None = None
    inputs: Mapping[str, str] = field(default_factory=frozen_dict)
    outputs: Mapping[str, str] = field(default_factory=frozen_dict)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    slo: SloConfig | None = None  # None: the kind's default (omnistage.graph.slo)
    # Kind-specific; parsed into the kind's own options class by the loader.
    options: Mapping[str, Any] = field(default_factory=frozen_dict)


@dataclass(frozen=True)
class TransportConfig:
    """How stage workers talk. Same-host tensors above the threshold go through shared memory."""

    protocol: Literal["ipc", "tcp"] = "ipc"
    host: str = "127.0.0.1"
    shm: bool = True
    shm_slots: int = 8
    shm_slot_mb: int = 64
    shm_threshold_kb: int = 64
    # GPU tensors to a stage on the same card go as CUDA IPC handles (opt-in: docs/architecture.md)
    cuda_ipc: bool = False
    high_water_mark: int = 1000
    startup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        _positive("shm_slots", self.shm_slots)
        _positive("shm_slot_mb", self.shm_slot_mb)
        _positive("startup_timeout_s", self.startup_timeout_s)


@dataclass(frozen=True)
class LauncherConfig:
    """Where replicas run. ``local``: processes of this host. ``ray``: Ray actors placed by the
    cluster (a replica asks for its threads as ``num_cpus``, a GPU as ``num_gpus: 1``, and its
    stage's ``ray_resources``); ``address`` joins a running cluster ("auto": the one this host
    belongs to, or a ``ray://`` client address), none starts a local one. ``launcher: ray`` is
    short for ``{kind: ray}``."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None
    namespace: str = "omnistage"


@dataclass(frozen=True)
class SupervisorConfig:
    """Replicas that die are started again: the first at once, each further one within
    ``window_s`` after ``backoff_s`` doubling up to ``max_backoff_s``; after ``max_restarts`` in
    ``window_s`` the stage waits until the window has room (a crash loop does not spin)."""

    enabled: bool = True
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_restarts", "window_s"):
            _positive(name, getattr(self, name))
        for name in ("backoff_s", "max_backoff_s"):
            _positive(name, getattr(self, name), allow_zero=True)


@dataclass(frozen=True)
class GraphConfig:
    name: str
    stages: Mapping[str, StageConfig]
    models: Mapping[str, ModelConfig] = field(default_factory=frozen_dict)
    transport: TransportConfig = field(default_factory=TransportConfig)
    elastic: ElasticConfig | None = None
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    launcher: LauncherConfig | Literal["local", "ray"] = field(default_factory=LauncherConfig)
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.launcher, str):  # (the short form)
            object.__setattr__(self, "launcher", LauncherConfig(kind=self.launcher))
