"""Continuous-batching scheduler: a state machine with no I/O and no model.

``schedule()`` picks this step's work under a token budget: running sequences first (a decode
costs one token, an unfinished prefill continues in chunks), then waiting ones, admitted in
arrival order while blocks, sequence slots and budget allow. When a running sequence needs a
block and none is free, the latest arrival is preempted: its blocks are freed and it goes back
to the front of the queue to be recomputed (its generated tokens are kept, never duplicated).
``update()`` applies the model's sampled tokens to the plan it was given.
"""
from __future__ import annotations

from collections import deque
from omnistage.ar_engine.block_manager import BlockManager
from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.sequence import Chunk, Sequence, Status, StepPlan


class Scheduler:
    def __init__(self, config: EngineConfig, max_seqs: int, blocks: BlockManager) -> None:
        """Reads the config's step budget, chunked prefill and short-prompt settings."""
        self.config = config
        self.max_seqs = max_seqs
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._arrivals = 0
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self._arrivals += 1
        seq.arrival = self._arrivals
        self.waiting.append(seq)

    def adopt(self, seq: Sequence) -> None:
        """Run ``seq`` from now on; its blocks are allocated and its K/V already in place."""
        self._arrivals += 1
        seq.arrival = self._arrivals
        seq.status = Status.RUNNING
        self.running.append(seq)
        self.blocks.commit_full_blocks(seq)

    def detach(self, seq: Sequence) -> None:
        """Take ``seq`` out of the batch but keep its blocks (see ``finish`` to free them)."""
        self.running.remove(seq)
        seq.status = Status.HELD

    def has_work(self) -> bool:
        """Whether a step would compute something (sequences waiting for fed inputs do not count)."""
        return any(s.remaining() > 0 for s in (*self.waiting, *self.running))

    def schedule(self) -> StepPlan:
        """This step's chunks, in four passes: running decodes; short waiting prompts (a fast
        lane, so a chat turn is not stuck behind long prefills); running prefills; then the
        other waiting sequences in arrival order."""
        plan = StepPlan([], [])
        budget = self._schedule_running(plan, decodes=True, budget=self.config.max_tokens_per_step)
        budget = self._admit(plan, budget, short_only=True)
        budget = self._schedule_running(plan, decodes=False, budget=budget)
        self._admit(plan, budget, short_only=False)
        return plan

    def _schedule_running(self, plan: StepPlan, decodes: bool, budget: int) -> int:
        scheduled = {c.seq.rid for c in plan.chunks}
        for seq in sorted(self.running, key=lambda s: s.arrival):
            if (seq.status is not Status.RUNNING or budget == 0 or seq.rid in scheduled
                    or (seq.remaining() == 1) != decodes):
                continue
            if not self._make_room(seq, plan):
                continue  # seq itself was preempted
            n = self._chunk_size(seq, budget)
            if n:
                plan.chunks.append(Chunk(seq, seq.num_computed, n))
                budget -= n
        return budget

    def _admit(self, plan: StepPlan, budget: int, short_only: bool) -> int:
        """Admit waiting sequences (only those whose whole prompt fits the fast lane, when
        ``short_only``) while blocks, sequence slots and budget allow; none after a preemption."""
        for seq in list(self.waiting):
            if plan.preempted or not budget or len(self.running) >= self.max_seqs:
                break
            if seq.remaining() <= 0:
                continue  # its inputs have not come yet
            if short_only and seq.remaining() > min(self.config.short_prompt_tokens, budget):
                continue
            if not self.blocks.can_allocate(seq):
                break
            self.blocks.allocate(seq)
            n = self._chunk_size(seq, budget)
            if n == 0:
                self.blocks.free_seq(seq)
                break
            self.waiting.remove(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            plan.chunks.append(Chunk(seq, seq.num_computed, n))
            budget -= n
        return budget

    def _chunk_size(self, seq: Sequence, budget: int) -> int:
        n = seq.remaining()
        if n <= budget:
            return n
        return budget if self.config.chunked_prefill else 0

    def _make_room(self, seq: Sequence, plan: StepPlan) -> bool:
        """Ensure ``seq`` has blocks for all its tokens, preempting the latest arrival not yet
        scheduled in this step (possibly ``seq`` itself) while blocks are short."""
        while not self.blocks.can_append(seq, 0):
            scheduled = {c.seq.rid for c in plan.chunks}
            victim = max((s for s in self.running if s.rid not in scheduled or s is seq), key=lambda s: s.arrival)
            self._preempt(victim)
            plan.preempted.append(victim)
            if victim is seq:
                return False
        self.blocks.may_append(seq)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        # Back in arrival order at the front: preempted work resumes before new work.
        idx = 0
        while idx < len(self.waiting) and self.waiting[idx].arrival < seq.arrival:
            idx += 1
        self.waiting.insert(idx, seq)

    def update(self, plan: StepPlan, sampled: dict[str, int]) -> list[Sequence]:
        """Apply a step's results; returns the sequences that got a new token."""
        grew = []
        for chunk in plan.chunks:
            seq = chunk.seq
            if seq.status is not Status.RUNNING:
                continue  # aborted while the step ran
            seq.num_computed = chunk.start + chunk.length
            self.blocks.commit_full_blocks(seq)
            if chunk.samples:
                seq.output.append(sampled[seq.rid])
                grew.append(seq)
        return grew

    def finish(self, seq: Sequence) -> None:
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        if seq.status in (Status.RUNNING, Status.HELD):
            self.blocks.free_seq(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def find(self, rid: str) -> Sequence | None:
        return next((s for s in (*self.running, *self.waiting) if s.rid == rid), None)
