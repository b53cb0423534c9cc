"""A stage replica's entry point: set up the process, build the kind's stage, report Ready (or
StartFailed with the traceback), then run the worker loop until Shutdown."""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback

import torch
import zmq

from omnistage.connectors.messages import Ready, StartFailed
from omnistage.connectors.shm import ShmRing, segment_name
from omnistage.connectors.mailer import Mailer
from omnistage.connectors.transport import Inbox, Peers, bind_address
from omnistage.connectors.wire import Decoder
from omnistage.graph.plan import GraphPlan
from omnistage.logs import setup_worker_logging
from omnistage.stages.worker.cores import CoreShare, board_path
from omnistage.stages.worker.loop import StageWorker
from omnistage.stages.worker.spec import WorkerSpec
from omnistage.stages.worker.stage import ProbingStage, Stage, StreamingInputStage

log = logging.getLogger("omnistage.worker")
SWITCH_INTERVAL_S = 0.0005
_IN_PROCESS_LOADS = threading.Lock()  # replicas run as threads of one process load one after another


def build_stage(plan: GraphPlan, name: str, device: str) -> Stage:
    """The stage of ``name``'s kind, loaded on ``device``; checked to have the capabilities its
    kind declares (a kind whose stages are probed must probe; a streamed input must be fed)."""
    stage = plan.stages[name]
    module, _, attr = stage.kind.factory.partition(":")
    built = getattr(importlib.import_module(module), attr)(stage, device)
    if not isinstance(built, Stage):
        raise TypeError(f"{stage.kind.factory} built a {type(built).__name__}, not a Stage")
    if stage.kind.probes and not isinstance(built, ProbingStage):
        raise TypeError(f"kind {stage.kind.name!r} is probed for its prefix cache, but {type(built).__name__} "
                        "is not a ProbingStage")
    if any(p.streaming for p in stage.inputs) and not isinstance(built, StreamingInputStage):
        raise TypeError(f"kind {stage.kind.name!r} has a streamed input, but {type(built).__name__} is not a "
                        "StreamingInputStage")
    return built


def quiet_loading() -> None:
    """No per-worker "Loading weights" progress bars: N workers would interleave them on one
    terminal. Load errors still surface (StartFailed carries the traceback)."""
    # Imported here, in the worker, so that the API process (which imports this module to
    # launch workers) does not pay for importing diffusers.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def where_am_i(spec: WorkerSpec) -> tuple[str, str]:
    """(this replica's node, the host its inbox binds): on Ray, the node id and the address Ray
    reports for the node, so that replicas on other nodes reach it; else "" and the graph's
    ``transport.host``."""
    if not spec.on_ray:
        return "", spec.plan.config.transport.host
    import ray
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a replica (process target or thread target)."""
    if not spec.in_process:
        if not spec.on_ray:
            # The parent owns shutdown: Ctrl-C reaches the whole process group, but only the
            # parent should act on it (it sends Shutdown to every worker).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        setup_worker_logging()
        quiet_loading()
        if spec.device == "cpu":
            torch.set_num_threads(spec.threads)
        if spec.gpu_share is not None:  # (an overrun fails this replica, not a neighbour on the card)
            torch.cuda.set_per_process_memory_fraction(spec.gpu_share, torch.device(spec.device))
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    transport = spec.plan.config.transport
    node, host = where_am_i(spec)
    ctx = zmq.Context()
    ring = ShmRing(segment_name(spec.session, spec.name), transport.shm_slots,
                   transport.shm_slot_mb << 20) if transport.shm else None
    # (in-process workers share one process: CUDA refuses to open its own allocations' handles)
    peers = Peers(node, ring, transport.shm_threshold_kb << 10, cuda_ipc=transport.cuda_ipc and not spec.in_process)
    peers.learn(spec.sink, spec.sink_node)
    mail = Mailer(ctx, peers.encoder, transport.high_water_mark)
    try:
        try:
            model = spec.plan.stages[spec.stage].model_path
            log.info("%s[%d]: loading %s on %s", spec.stage, spec.replica, model or "its function", spec.device)
            started = time.perf_counter()
            if spec.in_process:  # (loaders patch process-wide state, such as meta-device init: one at a time)
                with _IN_PROCESS_LOADS:
                    stage = build_stage(spec.plan, spec.stage, spec.device)
            else:
                stage = build_stage(spec.plan, spec.stage, spec.device)
            log.info("%s[%d]: ready in %.1f s", spec.stage, spec.replica, time.perf_counter() - started)
            protocol = "tcp" if spec.on_ray else transport.protocol
            inbox = Inbox(ctx, bind_address(protocol, host, spec.run_dir, spec.name), Decoder(),
                          transport.high_water_mark)
        except Exception:  # noqa: BLE001 - any load failure is reported to the orchestrator, then re-raised
            mail.put(spec.sink, StartFailed(spec.stage, spec.replica, traceback.format_exc()))
            raise
        mail.put(spec.sink, Ready(spec.stage, spec.replica, os.getpid(), inbox.address, node, stage.info()))
        cores = None if spec.core_slot is None else CoreShare(board_path(spec.run_dir), spec.core_slot, spec.board_cores)
        try:
            StageWorker(spec, stage, inbox, mail, cores, peers).run()
        finally:
            if cores is not None:
                cores.close()
    finally:
        mail.close()
        if ring is not None:
            ring.close()
        ctx.term()
