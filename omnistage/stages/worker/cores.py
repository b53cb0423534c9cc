"""CPU cores shared by a host's replicas as their load comes and goes.

Placement gives each CPU replica with ``threads: 0`` an even share of the cores. A fixed share
leaves cores idle whenever their replica is (an encoder whose cache answers every request, a
vocoder between utterances) while a busy replica runs on its share alone. With a ``CoreShare``
a replica instead says, before each step, that it is busy until about when that step should
end, and runs the step on ``cores // (replicas busy now)`` threads: alone it takes every core,
beside one other busy replica half of them, as placement would have given it.

A step's threads are set when it starts; a long step (a batch of images through a vision tower,
a long prefill) would keep them for seconds after the other replica went idle, or while it has
become busy. So while its steps are long, a replica also looks again every ``RECHECK_S`` from a
global module pre-forward hook (torch calls it before each module's forward; installed only
while steps are long, so a short decode step pays nothing for it).

The board is a small file in the run directory that every replica maps: one 8-byte slot per
replica holding the monotonic time its current step should be over by (0 when idle). Aligned
8-byte stores are atomic, so readers never see a torn value; a replica that dies mid-step
leaves a slot that expires by itself.
"""
from __future__ import annotations

import mmap
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

SLOTS = 256
BOARD_FILE = "cores.board"
MIN_HORIZON_S = 1.0  # a step is taken as lasting at least this long (or 4x the last one)
LONG_STEP_S = 0.05  # after a step this long, the next one looks again at the board while it runs
RECHECK_S = 0.01


def board_path(run_dir: str) -> Path:
    return Path(run_dir) / BOARD_FILE


def create_board(run_dir: str) -> None:
    """The board of a run directory, every slot idle (its launcher creates it once)."""
    board_path(run_dir).write_bytes(bytes(8 * SLOTS))


def clear_slot(run_dir: str, slot: int) -> None:
    """Mark ``slot`` idle (before the launcher hands it to a new replica)."""
    fd = os.open(board_path(run_dir), os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(8), 8 * slot)
    finally:
        os.close(fd)


class CoreShare:
    """One replica's slot on the board: ``before_step`` sets this process's torch threads for
    the step about to run, ``after_step`` notes how long it took, ``idle`` when it has nothing
    to do."""

    def __init__(self, board: Path, slot: int, cores: int) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"core board slot {slot} is outside 0..{SLOTS - 1}")
        with open(board, "r+b") as f:
            self._map = mmap.mmap(f.fileno(), 8 * SLOTS)
        self._until = np.frombuffer(self._map, dtype=np.float64)
        self.slot, self.cores = slot, max(1, cores)
        self._last_step = 0.0
        self._hook: Any = None  # the module pre-forward hook, while steps are long
        self._next_check = 0.0

    def threads_for_step(self) -> int:
        """Mark this replica busy for its next step; the threads that step should use."""
        now = time.monotonic()
        self._until[self.slot] = now + max(MIN_HORIZON_S, 4 * self._last_step)
        busy = int(np.count_nonzero(self._until > now))
        return max(1, self.cores // max(1, busy))

    def before_step(self) -> None:
        self._use(self.threads_for_step())
        long = self._last_step > LONG_STEP_S
        if long and self._hook is None:
            self._hook = register_module_forward_pre_hook(self._during_step)
        elif not long and self._hook is not None:
            self._hook.remove()
            self._hook = None

    def after_step(self, seconds: float) -> None:
        self._last_step = seconds

    def _during_step(self, module: torch.nn.Module, args: Any) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RECHECK_S
            self._use(self.threads_for_step())

    @staticmethod
    def _use(threads: int) -> None:
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def idle(self) -> None:
        if self._until[self.slot]:
            self._until[self.slot] = 0.0

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self.idle()
        del self._until
        self._map.close()


def host_cores() -> int:
    """The host's cores (the count placement divides)."""
    return os.cpu_count() or 1
