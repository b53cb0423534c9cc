"""Starts stage replicas: spawned processes, or threads for the in-process twin."""
from __future__ import annotations

import multiprocessing as mp
import threading
from typing import Protocol

from omnistage.stages.worker.loop import WorkerSpec, worker_main


class ReplicaRuntime(Protocol):
    def is_alive(self) -> bool: ...
    def stop(self, timeout: float) -> None: ...
    def kill(self) -> None: ...


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
        raise NotImplementedError("a thread replica cannot be killed; use mode='process'")


def launch(spec: WorkerSpec) -> ReplicaRuntime:
    return ThreadReplica(spec) if spec.in_process else ProcessReplica(spec)
