"""Typed errors. Each carries enough to build a user-facing message without a traceback."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a graph file: where (YAML path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class OmnistageError(Exception):
    """Base class of every error omnistage raises on purpose."""


class GraphConfigError(OmnistageError):
    """The graph file is malformed; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue], source: str = "") -> None:
        self.issues = list(issues)
        self.source = source
        head = f"{source}: " if source else ""
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{head}{len(self.issues)} error(s) in graph\n{lines}")


class RequestRejected(OmnistageError):
    """A request cannot be served as asked (bad input, unsupported route). Maps to a 4xx."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class Overloaded(RequestRejected):
    """Admission refused: queues full (429) or no live replica (503)."""

    def __init__(self, message: str, status: int = 429) -> None:
        super().__init__(message, status=status)


class RequestFailed(OmnistageError):
    """A request was admitted but a stage failed it."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class StageDeadError(RequestFailed):
    """The worker process serving a stage of the request died."""


class StageStartError(OmnistageError):
    """A stage worker did not come up (load error or handshake timeout)."""
