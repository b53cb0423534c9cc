"""Each GPU's memory divided among the stage replicas placed on it, checked before any starts.

A replica needs at least its weights, its activations, a CUDA context, and, where it holds a
KV cache it sizes itself, one sequence of ``max_model_len`` (``Need.least``). Its share of the
card is what it declares (``resources.gpu_memory_utilization``, or an AR stage's
``options.memory_utilization``); the replicas that declare none divide what the declared
ones leave of ``utilization`` (0.9, as vLLM's default), in proportion to what each needs at
least. A layout is refused, with every replica's numbers, when the shares add up to more than
the card or a share is less than its replica needs. Pure arithmetic: ``gpu_needs.py`` reads the
needs from the checkpoints, the worker caps its process at its share.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omnistage.errors import OmnistageError

GIB = 1 << 30
CONTEXT_BYTES = 512 << 20  # a process's CUDA context and library workspaces, outside torch's allocator
UTILIZATION = 0.9


class GpuBudgetError(OmnistageError, ValueError):
    """The replicas placed on a GPU need more memory than it has (the message has the table), or
    the GPU is not there."""


@dataclass(frozen=True)
class Need:
    """One replica (or tensor-parallel rank) on one GPU, in bytes."""

    stage: str
    replica: int
    device: str
    weights: int
    activations: int
    cache: int = 0  # a cache of fixed size (kv_cache_mb, num_blocks)
    kv_min: int = 0  # one sequence of max_model_len, for a KV cache sized from the share
    declared: float | None = None  # its declared share of the card

    @property
    def least(self) -> int:
        return self.weights + self.activations + self.cache + self.kv_min + CONTEXT_BYTES

    @property
    def name(self) -> str:
        return f"{self.stage}[{self.replica}]"


@dataclass(frozen=True)
class DeviceBudget:
    device: str
    total: int
    needs: tuple[Need, ...]
    shares: tuple[float, ...]  # each need's share of ``total``, in order

    def share(self, stage: str, replica: int) -> float | None:
        return next((s for n, s in zip(self.needs, self.shares) if (n.stage, n.replica) == (stage, replica)), None)

    def table(self) -> str:
        head = (f"  {'replica':<22}{'share':>7}{'of it':>11}{'weights':>11}{'activ.':>11}{'cache':>12}"
                f"{'context':>11}{'needs':>11}")
        rows = [f"{self.device}: {_size(self.total)}", head]
        for need, share in zip(self.needs, self.shares):
            cache = _size(need.cache + need.kv_min) + ("+" if need.kv_min else " ")
            rows.append(f"  {need.name:<22}{share:>7.3f}{_size(share * self.total):>11}{_size(need.weights):>11}"
                        f"{_size(need.activations):>11}{cache:>12}{_size(CONTEXT_BYTES):>11}{_size(need.least):>11}")
        rows.append(f"  {'total':<22}{sum(self.shares):>7.3f}{_size(sum(self.shares) * self.total):>11}")
        return "\n".join(rows)


def shares(budgets: Mapping[str, DeviceBudget]) -> dict[tuple[str, str], float]:
    """(stage, card) -> the share each of the stage's processes there is capped at (replicas of a
    stage need the same, so a replica restarted on the card gets the share again)."""
    return {(n.stage, b.device): s for b in budgets.values() for n, s in zip(b.needs, b.shares)}


def divide(needs: Sequence[Need], totals: Mapping[str, int], utilization: float = UTILIZATION) -> dict[str, DeviceBudget]:
    """Every GPU's budget. Raises GpuBudgetError naming what does not fit, with the numbers."""
    budgets = {}
    for device in sorted({n.device for n in needs}):
        if device not in totals:
            raise GpuBudgetError(f"{device} is not a GPU of this machine (it has {', '.join(sorted(totals)) or 'none'})")
        on = tuple(n for n in needs if n.device == device)
        budget = DeviceBudget(device, totals[device], on, _shares(on, totals[device], utilization))
        _check(budget)
        budgets[device] = budget
    return budgets


def _shares(needs: Sequence[Need], total: int, utilization: float) -> tuple[float, ...]:
    declared = sum(n.declared for n in needs if n.declared is not None)
    free = [n for n in needs if n.declared is None]
    left, wanted = utilization - declared, sum(n.least for n in free)
    # (left may not cover the needs: _check then refuses, showing the shares it came to)
    return tuple(n.declared if n.declared is not None else max(0.0, left) * n.least / wanted for n in needs)


def _check(budget: DeviceBudget) -> None:
    problems = [f"{n.name} needs at least {_size(n.least)} and its share is {_size(s * budget.total)}"
                for n, s in zip(budget.needs, budget.shares) if s * budget.total < n.least]
    if sum(budget.shares) > 1 + 1e-9:
        problems.insert(0, f"the shares add up to {sum(budget.shares):.3f} of the card")
    if problems:
        raise GpuBudgetError(f"{budget.device} is over-committed: {'; '.join(problems)}\n{budget.table()}\n"
                               "Give a stage another device (resources.device) or another share "
                               "(resources.gpu_memory_utilization), or make it need less (max_model_len, "
                               "max_batch, dtype); '+' marks a KV cache that grows into the rest of its share.")


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
