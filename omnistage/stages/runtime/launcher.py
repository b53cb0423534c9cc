"""Starts stage replicas on this host: processes, or threads for the in-process twin.

A launcher is the seam between the replica table and wherever replicas run: ``start`` lists a
replica in the table and starts its worker; the worker reports Ready (or StartFailed) to the
orchestrator's sink on its own.

Processes are forked from a fork server that has imported torch, transformers, diffusers and
every stage kind's module once (``OMNISTAGE_START_METHOD=spawn`` starts each from scratch
instead). A replica then starts in a fraction of a second plus its model load, instead of
re-importing those for seconds of CPU each: start-up, restarts after a crash and elastic moves
all pay less. The server imports nothing that starts threads or touches a GPU, so forking it is
safe for CUDA workers. Each replica gets the launching process's environment as it is at its
start (the fork server's own is the one it was started with).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

from omnistage.graph.kinds import registry
from omnistage.graph.placement import gpu_device
from omnistage.graph.plan import GraphPlan
from omnistage.stages.runtime.replicas import Replica, ReplicaRuntime, ReplicaTable
from omnistage.stages.worker.cores import SLOTS, clear_slot, create_board, host_cores
from omnistage.stages.worker.main import worker_main
from omnistage.stages.worker.spec import WorkerSpec


START_METHODS = ("forkserver", "spawn")


def worker_context() -> Any:
    """The multiprocessing context replicas start in (see the module docstring)."""
    method = os.environ.get("OMNISTAGE_START_METHOD", "forkserver")
    if method not in START_METHODS:
        raise ValueError(f"OMNISTAGE_START_METHOD must be one of {', '.join(START_METHODS)}, not {method!r}")
    context = mp.get_context(method)
    if method == "forkserver":
        factories = sorted({kind.factory.partition(":")[0] for kind in registry().values()})
        # "__main__" as spawn does: kinds a user's script registers exist in its workers too.
        context.set_forkserver_preload(["__main__", "omnistage.stages.worker.main", "transformers", "diffusers",
                                        *factories])
    return context


def process_main(spec: WorkerSpec, environ: dict[str, str]) -> None:
    """A replica process: the launcher's environment at launch, then the worker."""
    os.environ.clear()
    os.environ.update(environ)
    worker_main(spec)


class ProcessReplica:
    def __init__(self, spec: WorkerSpec) -> None:
        self.process = worker_context().Process(target=process_main, args=(spec, dict(os.environ)),
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

    def __init__(self, plan: GraphPlan, session: str, run_dir: str, sink: str, in_process: bool = False,
                 gpu_shares: Mapping[tuple[str, str], float] | None = None) -> None:
        self.plan, self.session, self.run_dir, self.sink, self.in_process = plan, session, run_dir, sink, in_process
        self.gpu_shares = dict(gpu_shares or {})  # (stage, card) -> its processes' share there
        self._slots: dict[int, ReplicaRuntime] = {}  # core-board slot -> the replica that holds it
        # Load-following replicas share the cores that replicas with a fixed thread count leave.
        fixed = sum(st.config.resources.threads * st.config.resources.initial_replicas for st in plan.stages.values()
                    if st.config.resources.device == "cpu" and st.config.resources.threads)
        self._board_cores = max(1, host_cores() - fixed)
        if not in_process:
            create_board(run_dir)

    def start(self, table: ReplicaTable, stage: str, device: str, threads: int, group: str | None = None) -> Replica:
        def launch(index: int) -> ReplicaRuntime:
            slot = self._free_slot() if self._follows_load(stage, device) else None
            spec = self.spec(stage, index, device, threads, slot)
            runtime = ThreadReplica(spec) if self.in_process else ProcessReplica(spec)
            if slot is not None:
                self._slots[slot] = runtime
            return runtime
        return table.add(stage, launch, device, group, threads)

    def spec(self, stage: str, index: int, device: str, threads: int, slot: int | None = None) -> WorkerSpec:
        """What replica ``index`` of ``stage`` is told (a process on a GPU: its share of the card)."""
        share = None if self.in_process else self.gpu_shares.get((stage, gpu_device(device) or ""))
        return WorkerSpec(self.plan, stage, index, device, threads, self.session, self.run_dir, self.sink,
                          self.in_process, None if self.in_process else os.getpid(), slot, self._board_cores,
                          gpu_share=share)

    def close(self) -> None:
        pass

    def _free_slot(self) -> int | None:
        """A board slot no live replica holds (cleared: its last holder may have died mid-step),
        or None when all are held (that replica keeps its placed threads)."""
        slot = next((s for s, held in self._slots.items() if not held.is_alive()), None)
        if slot is None:
            slot = len(self._slots) if len(self._slots) < SLOTS else None
        if slot is not None:
            clear_slot(self.run_dir, slot)
        return slot

    def _follows_load(self, stage: str, device: str) -> bool:
        """A CPU replica whose threads placement shares out (``threads: 0``, no device pool)
        takes its threads from the core board; one given a number keeps it."""
        elastic = self.plan.config.elastic
        return (device == "cpu" and not self.in_process and self.plan.stages[stage].config.resources.threads == 0
                and not (elastic is not None and elastic.devices))
