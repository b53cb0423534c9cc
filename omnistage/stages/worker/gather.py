"""A worker's per-request input bookkeeping.

Which requests are admitted here, which of their inputs have arrived (an upstream stage can be
faster than the Admit; a split input comes in parts; a streamed input in deltas, the first of
which is enough to start), which have started, and which ended recently, so that late inputs
for them are dropped instead of kept forever. No I/O; one thread.
"""
from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from typing import Any

from omnistage.connectors.messages import Admit, Data, Part

GONE_MEMORY = 10_000


class Gather:
    def __init__(self) -> None:
        self.admitted: dict[str, Admit] = {}
        self.inputs: dict[str, dict[str, Any]] = defaultdict(dict)
        self.early: dict[str, list[Data | Part]] = defaultdict(list)
        self.parts: dict[str, Counter[str]] = defaultdict(Counter)  # parts received per split port
        self.closed: dict[str, set[str]] = defaultdict(set)  # streamed ports whose last part came
        self.started: set[str] = set()
        self.gone: OrderedDict[str, None] = OrderedDict()

    def admit(self, admit: Admit) -> bool:
        """Register an Admit; True when the request now has all its inputs."""
        self.admitted[admit.rid] = admit
        for data in self.early.pop(admit.rid, []):
            self._receive(admit, data)
        return self.ready(admit.rid)

    def data(self, data: Data | Part) -> bool:
        """Take one input (a streamed one's part before the request started); True when its
        (admitted) request now has all its inputs."""
        if data.rid in self.gone:
            return False
        admit = self.admitted.get(data.rid)
        if admit is None:
            self.early[data.rid].append(data)
            return False
        self._receive(admit, data)
        return self.ready(data.rid)

    def provide(self, rid: str, inputs: dict[str, Any]) -> None:
        """Inputs that came another way (with a Probe)."""
        self.inputs[rid].update(inputs)

    def _receive(self, admit: Admit, data: Data | Part) -> None:
        got = self.inputs[admit.rid]
        if isinstance(data, Part):
            got.setdefault(data.port, [])
            if data.last:
                self.closed[admit.rid].add(data.port)
            else:
                got[data.port].append(data.value)
        elif data.port in admit.parts:  # one of possibly several parts: gather them
            got[data.port] = got.get(data.port, []) + list(data.value)
            self.parts[admit.rid][data.port] += 1
        else:
            got[data.port] = data.value

    def ready(self, rid: str) -> bool:
        admit, got, parts = self.admitted[rid], self.inputs[rid], self.parts[rid]
        return all(port in got and parts[port] >= admit.parts.get(port, 0) for port in admit.expect)

    def take(self, rid: str) -> tuple[dict[str, Any], frozenset[str]]:
        """The inputs of a ready request and its streamed ports still open (it stays admitted
        until forgotten; later parts of open streams go straight to the stage's ``feed``)."""
        self.parts.pop(rid, None)
        self.started.add(rid)
        closed = self.closed.pop(rid, set())
        return self.inputs.pop(rid), frozenset(self.admitted[rid].streams) - closed

    def forget(self, rid: str) -> None:
        for table in (self.admitted, self.inputs, self.early, self.parts, self.closed):
            table.pop(rid, None)
        self.started.discard(rid)
        self.gone[rid] = None
        if len(self.gone) > GONE_MEMORY:
            self.gone.popitem(last=False)
