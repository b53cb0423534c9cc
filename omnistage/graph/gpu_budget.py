"""Each GPU's memory divided among the stage replicas placed on it, checked before any starts.

A replica needs at least its weights, its activations, and, where it holds a KV cache it sizes
itself, one sequence of ``max_model_len`` (``Need.least``): torch's allocator holds these, and
the process is capped at its share of the card. Its CUDA context and library workspaces
(``CONTEXT_BYTES``) lie outside that cap, so they are counted beside the shares. A replica's
share is what it declares (``resources.gpu_memory_utilization``, or an AR stage's
``options.memory_utilization``); the replicas that declare none divide what the declared ones
and the contexts leave of ``utilization`` (0.9, as vLLM's default), in proportion to what each
needs at least. The ranks of a tensor-parallel replica each hold the same (a shard of the
weights, the cache of their heads, sized once by rank 0), so they all get the fewest bytes any
of their cards gave one of them. A layout is refused, with every replica's numbers, when the shares and
the contexts add up to more than the card or a share is less than its replica needs. Pure arithmetic: ``gpu_needs.py`` reads the
needs from the checkpoints, the worker caps its process at its share.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

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
    tp: int = 1  # the replica's tensor-parallel ranks (one Need each, on cards of their own)

    @property
    def least(self) -> int:
        """Bytes its process's allocator needs at least (the CUDA context comes on top)."""
        return self.weights + self.activations + self.cache + self.kv_min

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
                        f"{_size(need.activations):>11}{cache:>12}{_size(CONTEXT_BYTES):>11}"
                        f"{_size(need.least + CONTEXT_BYTES):>11}")
        rows.append(f"  {'total, with contexts':<22}{self.used / self.total:>7.3f}{_size(self.used):>11}"
                    f"{'':>45}{_size(self.contexts):>11}")
        return "\n".join(rows)

    @property
    def contexts(self) -> int:
        return len(self.needs) * CONTEXT_BYTES

    @property
    def used(self) -> float:
        """Bytes the replicas may take: their shares, and their CUDA contexts beside them."""
        return sum(self.shares) * self.total + self.contexts


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
        budgets[device] = DeviceBudget(device, totals[device], on, _shares(on, totals[device], utilization))
    budgets = _same_for_ranks(budgets)
    for budget in budgets.values():
        _check(budget)
    return budgets


def _shares(needs: Sequence[Need], total: int, utilization: float) -> tuple[float, ...]:
    declared = sum(n.declared for n in needs if n.declared is not None)
    free = [n for n in needs if n.declared is None]
    left, wanted = utilization - declared - len(needs) * CONTEXT_BYTES / total, sum(n.least for n in free)
    # (left may not cover the needs: _check then refuses, showing the shares it came to)
    return tuple(n.declared if n.declared is not None else max(0.0, left) * n.least / wanted for n in needs)


def _same_for_ranks(budgets: dict[str, DeviceBudget]) -> dict[str, DeviceBudget]:
    """Every rank of a tensor-parallel replica gets the fewest bytes any of them got (as a
    share of its own card, which may be larger)."""
    least: dict[tuple[str, int], float] = {}
    for budget in budgets.values():
        for need, share in zip(budget.needs, budget.shares):
            if need.tp > 1:
                key, held = (need.stage, need.replica), share * budget.total
                least[key] = min(held, least.get(key, held))
    return {device: replace(b, shares=tuple(least[(n.stage, n.replica)] / b.total if (n.stage, n.replica) in least
                                            else s for n, s in zip(b.needs, b.shares)))
            for device, b in budgets.items()}


def _check(budget: DeviceBudget) -> None:
    problems = [f"{n.name} needs at least {_size(n.least)} and its share is {_size(s * budget.total)}"
                for n, s in zip(budget.needs, budget.shares) if s * budget.total < n.least]
    if budget.used > budget.total:
        problems.insert(0, f"the shares ({sum(budget.shares):.3f} of the card) and {len(budget.needs)} CUDA "
                           f"context(s) of {_size(CONTEXT_BYTES)} add up to {_size(budget.used)}")
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
