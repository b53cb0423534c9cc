"""Starts stage replicas on this host: spawned processes, or threads for the in-process twin.

A launcher is the seam between the replica table and wherever replicas run: ``start`` lists a
replica in the table and starts its worker; the worker reports Ready (or StartFailed) to the
orchestrator's sink on its own.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import threading

from omnistage.graph.plan import GraphPlan
from omnistage.stages.runtime.replicas import Replica, ReplicaRuntime, ReplicaTable
from omnistage.stages.worker.main import worker_main
from omnistage.stages.worker.spec import WorkerSpec


class ProcessReplica:
    def __init__(self, spec: WorkerSpec) -> None:
        self.process = mp.get_context("spawn").Process(target=worker_main, args=(spec,),
                                                       name=f"omnistage-{spec.name}", daemon=True)
        self.process.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def stop(self, timeout: float) -> None:
        """Wait for a clean exit (after Shutdown was sent), then terminate, then kill."""
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)

    def exit_reason(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "running"
        if code >= 0:
            return f"exit code {code}"
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"


class ThreadReplica:
    """The in-process twin: same worker code, run in a thread. Cannot be killed, only stopped."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.thread = threading.Thread(target=worker_main, args=(spec,), name=f"omnistage-{spec.name}", daemon=True)
        self.thread.start()

    pid = None

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float) -> None:
        self.thread.join(timeout)

    def kill(self) -> None:
        raise NotImplementedError("a thread replica cannot be killed; run the pipeline with in_process=False")

    def exit_reason(self) -> str:
        return "running" if self.thread.is_alive() else "its thread ended"


class LocalLauncher:
    """Replicas as processes (or threads) of this host, talking to the sink at ``sink``."""

    def __init__(self, plan: GraphPlan, session: str, run_dir: str, sink: str, in_process: bool = False) -> None:
        self.plan, self.session, self.run_dir, self.sink, self.in_process = plan, session, run_dir, sink, in_process

    def start(self, table: ReplicaTable, stage: str, device: str, threads: int, group: str | None = None) -> Replica:
        def launch(index: int) -> ReplicaRuntime:
            spec = WorkerSpec(self.plan, stage, index, device, threads, self.session, self.run_dir, self.sink,
                              self.in_process)
            return ThreadReplica(spec) if self.in_process else ProcessReplica(spec)
        return table.add(stage, launch, device, group, threads)
