"""Prometheus metrics of the server: request counts and latencies, replica states."""
from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from omnistage.stages.runtime.handle import RequestHandle
from omnistage.stages.runtime.replicas import Replica, ReplicaState

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("omnistage_requests", "Requests by endpoint and status", ["endpoint", "status"],
                                registry=self.registry)
        self.ttft = Histogram("omnistage_time_to_first_token_seconds", "Time to the first output chunk",
                              buckets=_BUCKETS, registry=self.registry)
        self.e2e = Histogram("omnistage_request_latency_seconds", "Arrival to last output", buckets=_BUCKETS,
                             registry=self.registry)
        self.inter_token = Histogram("omnistage_inter_token_seconds", "Mean gap between output chunks per request",
                                     buckets=_BUCKETS, registry=self.registry)
        self.ttfp = Histogram("omnistage_time_to_first_audio_seconds", "Time to the first audio packet",
                              buckets=_BUCKETS, registry=self.registry)
        self.rtf = Histogram("omnistage_audio_real_time_factor", "Request latency over seconds of audio made",
                             buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=self.registry)
        self.inflight = Gauge("omnistage_stage_inflight_requests", "Requests admitted per stage replica",
                              ["stage", "replica"], registry=self.registry)
        self.ready = Gauge("omnistage_stage_replica_ready", "1 when the replica is ready", ["stage", "replica"],
                           registry=self.registry)
        self.replicas = Gauge("omnistage_stage_replicas", "Replicas per stage and state", ["stage", "state"],
                              registry=self.registry)
        self.group_replicas = Gauge("omnistage_group_replicas", "Ready replicas per modality group of a stage",
                                    ["stage", "group"], registry=self.registry)
        self.actions = Gauge("omnistage_elastic_action", "Elastic actions taken (value: unix time), with their reason",
                             ["seq", "kind", "stage", "replica", "device", "reason"], registry=self.registry)
        self._gauges: dict[str, Gauge] = {}
        self._shown = 0

    def observe(self, handle: RequestHandle, chunks: int, sample_rate: int | None = None) -> None:
        if handle.first_audio_at is not None and sample_rate:
            self.ttfp.observe(handle.first_audio_at - handle.created_at)
            if handle.finished_at is not None and handle.audio_samples:
                self.rtf.observe((handle.finished_at - handle.created_at) * sample_rate / handle.audio_samples)
        if handle.first_at is not None:
            self.ttft.observe(handle.first_at - handle.created_at)
        if handle.finished_at is not None:
            self.e2e.observe(handle.finished_at - handle.created_at)
            if handle.first_at is not None and chunks > 1:
                self.inter_token.observe((handle.finished_at - handle.first_at) / (chunks - 1))

    def render(self, replicas: list[Replica], actions: list | None = None,
               groups: dict[str, list[str]] | None = None) -> bytes:
        """``replicas``: the replica table's; ``groups``: each stage's modality groups (shown even
        while one has no replica)."""
        self.replicas.clear()
        self.group_replicas.clear()
        self.inflight.clear()
        self.ready.clear()
        for gauge in self._gauges.values():
            gauge.clear()  # replicas that left the table leave the metrics too
        by_stage: dict[str, list[Replica]] = {}
        for rep in replicas:
            by_stage.setdefault(rep.stage, []).append(rep)
        for stage in sorted({*by_stage, *(groups or {})}):
            reps = by_stage.get(stage, [])
            for state in ReplicaState:
                self.replicas.labels(stage, state.value).set(sum(1 for r in reps if r.state is state))
            for group in sorted({*(groups or {}).get(stage, ()), *(r.group for r in reps if r.group is not None)}):
                ready = sum(1 for r in reps if r.group == group and r.state is ReplicaState.READY)
                self.group_replicas.labels(stage, group).set(ready)
            for rep in reps:
                self.inflight.labels(stage, str(rep.index)).set(len(rep.inflight))
                self.ready.labels(stage, str(rep.index)).set(1 if rep.state is ReplicaState.READY else 0)
                for name, value in rep.stats.items():
                    self._stage_gauge(name).labels(stage, str(rep.index)).set(value)
        for seq, a in enumerate(actions or []):
            if seq >= self._shown:  # every action, once, with its reason
                self.actions.labels(str(seq), a.kind, a.stage, str(a.replica), a.device, a.reason[:200]).set(a.time)
        self._shown = len(actions or [])
        return generate_latest(self.registry)

    def _stage_gauge(self, name: str) -> Gauge:
        """One gauge per number a stage reports (waiting, running, kv_usage, step_seconds, ...)."""
        key = "omnistage_stage_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)
        if key not in self._gauges:
            self._gauges[key] = Gauge(key, f"Stage replica {name}, as last reported", ["stage", "replica"],
                                      registry=self.registry)
        return self._gauges[key]
