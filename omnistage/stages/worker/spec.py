"""What a launcher tells a new stage replica: which stage of which plan it is, where it runs and
where it reports."""
from __future__ import annotations

from dataclasses import dataclass

from omnistage.graph.plan import GraphPlan


@dataclass(frozen=True)
class WorkerSpec:
    plan: GraphPlan
    stage: str
    replica: int
    device: str
    threads: int
    session: str
    run_dir: str
    sink: str
    in_process: bool = False
    owner: int | None = None  # the pid of the process the replica serves; it exits when that one is gone
    core_slot: int | None = None  # its slot on the run's core board (threads follow load), or fixed threads
    board_cores: int = 1  # the cores load-following replicas share (the host's less fixed replicas' threads)
    on_ray: bool = False  # a Ray actor: it binds on its node's address and names its node
    sink_node: str = ""  # the node of the process at ``sink``
    gpu_share: float | None = None  # on a GPU: the share of its memory the process is capped at

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.replica}"
