"""Starts stage replicas as Ray actors, placed by the cluster.

Each replica is one actor (its own process, on whichever node Ray picks) whose one call runs the
same worker as a local replica, until Shutdown. Ray places it by what it asks for: its threads
as ``num_cpus``, a GPU as ``num_gpus: 1`` (Ray sets the actor's visible device; a
tensor-parallel replica asks for all its ranks' CPUs and GPUs, on one node), and its stage's
``ray_resources`` (custom resources that pin a stage to the nodes offering them). Model-loading
arguments (the compiled plan) travel once through Ray; requests never do: replicas bind a ZeroMQ
inbox on the address Ray reports for their node and report it in their Ready message, as local
ones do. A replica names its node, so tensors between replicas of one node still go through
shared memory and cross-node ones as ZeroMQ frames over TCP (``connectors.transport.Peers``).

Replicas are non-detached actors of this driver: they die with it. ``close`` stops them and,
when this process started its own local Ray, shuts it down.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from omnistage.graph.plan import GraphPlan
from omnistage.graph.schema import LauncherConfig
from omnistage.stages.runtime.replicas import Replica, ReplicaRuntime, ReplicaTable
from omnistage.stages.worker.spec import WorkerSpec

log = logging.getLogger("omnistage.ray")


def connect(config: LauncherConfig, cpus: int = 0) -> tuple[bool, str, str]:
    """Join the cluster at ``config.address`` (or start a local one, offering at least ``cpus``
    logical CPUs: what the graph's replicas ask for at most, as they share this host's cores by
    load). (whether this call started Ray, this process's node id, the address Ray reports for
    this node)."""
    import ray
    started = False
    if not ray.is_initialized():
        local = {"num_cpus": max(os.cpu_count() or 1, cpus)} if config.address is None else {}
        ray.init(address=config.address, namespace=config.namespace, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True, **local)
        started = config.address is None
    return started, ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def cpus_asked(plan: GraphPlan) -> int:
    """Logical CPUs every stage's largest replica count asks for on Ray."""
    return sum(res.max_replicas * (res.threads or 1) * res.tensor_parallel
               for res in (st.resources for st in plan.config.stages.values()))


class _Worker:
    """The actor: one replica's process."""

    def run(self, spec: WorkerSpec) -> None:
        from omnistage.stages.worker.main import worker_main
        worker_main(spec)

    def node(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()


class RayReplica:
    """A replica's actor and its running call: it is alive while the call has not returned."""

    def __init__(self, actor: Any, call: Any) -> None:
        self.actor, self.call = actor, call

    pid = None

    def is_alive(self) -> bool:
        import ray
        done, _ = ray.wait([self.call], timeout=0)
        return not done

    def stop(self, timeout: float) -> None:
        """Wait for a clean exit (after Shutdown was sent), then kill the actor."""
        import ray
        ray.wait([self.call], timeout=timeout)
        self.kill()

    def kill(self) -> None:
        import ray
        ray.kill(self.actor, no_restart=True)

    def exit_reason(self) -> str:
        import ray
        if self.is_alive():
            return "running"
        try:
            ray.get(self.call)
        except ray.exceptions.RayActorError as exc:  # the actor's process or node died
            return f"its Ray actor died: {str(exc).splitlines()[0]}"
        except ray.exceptions.RayTaskError as exc:
            return f"its worker raised {type(exc.cause).__name__}: {exc.cause}"
        return "exited"


class RayLauncher:
    """Replicas as Ray actors, reporting to the sink at ``sink`` on node ``sink_node``."""

    def __init__(self, plan: GraphPlan, session: str, run_dir: str, sink: str, sink_node: str,
                 started_ray: bool) -> None:
        import ray
        self.plan, self.session, self.run_dir, self.sink, self.sink_node = plan, session, run_dir, sink, sink_node
        self.started_ray = started_ray
        self._actor = ray.remote(_Worker)

    def start(self, table: ReplicaTable, stage: str, device: str, threads: int, group: str | None = None) -> Replica:
        def launch(index: int) -> ReplicaRuntime:
            gpu = device.startswith("cuda")
            spec = WorkerSpec(self.plan, stage, index, "cuda" if gpu else device, threads, self.session,
                              self.run_dir, self.sink, on_ray=True, sink_node=self.sink_node)
            ask = dict(self.ask(stage, device, threads))
            options = {"num_cpus": ask.pop("CPU"), "num_gpus": ask.pop("GPU"), "resources": ask, "max_restarts": 0,
                       "name": f"omnistage-{self.session}-{stage}-{index}"}
            actor = self._actor.options(**options).remote()
            return RayReplica(actor, actor.run.remote(spec))
        return table.add(stage, launch, device, group, threads)

    def ask(self, stage: str, device: str, threads: int) -> dict[str, float]:
        """What one replica of ``stage`` asks Ray for: its threads as CPUs and its GPU, times its
        ranks (a tensor-parallel replica's other ranks are processes the actor starts on its
        node), and its stage's custom resources."""
        resources = self.plan.stages[stage].config.resources
        ranks = resources.tensor_parallel
        gpus = ranks if device.startswith("cuda") else 0
        return {"CPU": threads * ranks, "GPU": gpus, **resources.ray_resources}

    @staticmethod
    def nodes() -> list[dict[str, Any]]:
        """The cluster's nodes as Ray lists them (alive or not, with their total resources)."""
        import ray
        return ray.nodes()

    def close(self) -> None:
        if self.started_ray:
            import ray
            ray.shutdown()
