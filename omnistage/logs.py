"""Logging for the server and its stage workers: one format chosen at start-up, inherited by the
workers through the environment (they are spawned, not forked)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

_LEVEL, _FORMAT = "OMNISTAGE_LOG_LEVEL", "OMNISTAGE_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "process": record.processName,
                "message": record.getMessage()}
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger (and remember the choice for stage workers started later)."""
    os.environ[_LEVEL], os.environ[_FORMAT] = level, fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def setup_worker_logging() -> None:
    """In a stage worker: the server's choice, when it made one."""
    if _LEVEL in os.environ:
        setup_logging(os.environ[_LEVEL], os.environ.get(_FORMAT, "text"))
