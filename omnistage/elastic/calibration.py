"""The elastic simulator's service-time models as measured, with when and at which commit.

``benchmarks/elastic_calibrate.py`` measures them on real worker processes and saves them here
(JSON: date, commit, whether the tree had uncommitted changes, one model per request type).
``staleness`` says whether the engines the models stand for (the code a worker runs a step
with) changed after that commit, so a simulation never passes off old numbers as current.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omnistage.elastic.sim import StageModel

# What a worker's step time depends on.
ENGINE_PATHS = ("omnistage/ar_engine", "omnistage/diffusion", "omnistage/speech", "omnistage/encoders",
                "omnistage/stages/kinds", "omnistage/stages/worker", "omnistage/connectors")


@dataclass(frozen=True)
class Calibration:
    date: str
    commit: str
    dirty: bool  # the tree had uncommitted changes when measured
    models: tuple[StageModel, ...]

    def model(self, name: str) -> StageModel:
        return next(m for m in self.models if m.name == name)


def save(path: Path, models: list[StageModel], root: Path) -> Calibration:
    commit, dirty = head(root)
    cal = Calibration(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit, dirty, tuple(models))
    path.write_text(json.dumps({**asdict(cal), "models": [asdict(m) for m in models]}, indent=2) + "\n")
    return cal


def load(path: Path) -> Calibration:
    data = json.loads(path.read_text())
    return Calibration(data["date"], data["commit"], data["dirty"], tuple(StageModel(**m) for m in data["models"]))


def head(root: Path) -> tuple[str, bool]:
    """This checkout's commit and whether its engine code has uncommitted changes ("" outside git)."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return "", False
    changed = _git(root, "status", "--porcelain", "--", *ENGINE_PATHS)
    return commit, bool(changed)


def staleness(cal: Calibration, root: Path) -> str:
    """Why ``cal`` may not describe this checkout's engines ("" when it does)."""
    if not cal.commit:
        return "it names no commit it was measured at"
    last = _git(root, "log", "-1", "--format=%H", "--", *ENGINE_PATHS)
    if last is None:
        return "this is not a git checkout, so engine changes since cannot be told"
    if _git(root, "merge-base", "--is-ancestor", last, cal.commit) is None:
        return f"the engines changed after it was measured (commit {last[:10]})"
    if head(root)[1]:
        return "the engines have uncommitted changes"
    if cal.dirty:
        return "it was measured with uncommitted engine changes"
    return ""


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None when it fails (not a checkout, unknown commit, not an ancestor)."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
