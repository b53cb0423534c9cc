"""A worker's per-request input bookkeeping.

Which requests are admitted here, which of their inputs have arrived (an upstream stage can be
faster than the Admit; a split input comes in parts), and which requests ended recently, so that
late inputs for them are dropped instead of kept forever. No I/O; one thread.
"""
from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from typing import Any

from omnistage.connectors.messages import Admit, Data

GONE_MEMORY = 10_000


class Gather:
    def __init__(self) -> None:
        self.admitted: dict[str, Admit] = {}
        self.inputs: dict[str, dict[str, Any]] = defaultdict(dict)
        self.early: dict[str, list[Data]] = defaultdict(list)
        self.parts: dict[str, Counter[str]] = defaultdict(Counter)  # parts received per split port
        self.gone: OrderedDict[str, None] = OrderedDict()

    def admit(self, admit: Admit) -> bool:
        """Register an Admit; True when the request now has all its inputs."""
        self.admitted[admit.rid] = admit
        for data in self.early.pop(admit.rid, []):
            self._receive(admit, data)
        return self.ready(admit.rid)

    def data(self, data: Data) -> bool:
        """Take one input; True when its (admitted) request now has all its inputs."""
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

    def _receive(self, admit: Admit, data: Data) -> None:
        got = self.inputs[admit.rid]
        if data.port in admit.parts:  # one of possibly several parts: gather them
            got[data.port] = got.get(data.port, []) + list(data.value)
            self.parts[admit.rid][data.port] += 1
        else:
            got[data.port] = data.value

    def ready(self, rid: str) -> bool:
        admit, got, parts = self.admitted[rid], self.inputs[rid], self.parts[rid]
        return all(port in got and parts[port] >= admit.parts.get(port, 0) for port in admit.expect)

    def take(self, rid: str) -> dict[str, Any]:
        """The inputs of a ready request (it stays admitted until forgotten)."""
        self.parts.pop(rid, None)
        return self.inputs.pop(rid)

    def forget(self, rid: str) -> None:
        for table in (self.admitted, self.inputs, self.early, self.parts):
            table.pop(rid, None)
        self.gone[rid] = None
        if len(self.gone) > GONE_MEMORY:
            self.gone.popitem(last=False)
