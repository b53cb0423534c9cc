"""KV block pool with block-hash prefix caching.

A block holds ``block_size`` token positions of K/V for every layer. A full block's hash
chains its parent's hash with its own token keys (media placeholders contribute their item's
content hash and offset), so equal hashes mean equal prefixes. Blocks are shared by reference
count; a block whose count drops to zero keeps its hash and goes to the back of the free list,
where a later request can revive it; allocation takes from the front, evicting the least
recently freed cached block first.

Not thread-safe: the scheduler owns it and calls it from one thread.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from omnistage.ar_engine.sequence import Sequence, token_bytes


@dataclass
class Block:
    id: int
    ref_count: int = 0
    hash: bytes | None = None


def chain_hash(parent: bytes | None, keys: bytes) -> bytes:
    """A block's hash: its parent's chained with its keys (``Sequence.block_keys``)."""
    return hashlib.blake2b((parent or b"root") + keys, digest_size=16).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.hits = 0
        self.queries = 0

    @property
    def num_free(self) -> int:
        return len(self.free)

    def usage(self) -> float:
        return 1 - len(self.free) / len(self.blocks)

    # --- admission --------------------------------------------------------------------------
    def _hash_blocks(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Extend ``seq.block_hashes`` to its first ``num_blocks`` full blocks."""
        bs, hashes = self.block_size, seq.block_hashes
        first = len(hashes)
        if first < num_blocks and not seq.media:  # token ids only: one slice of the tokens for all the blocks
            raw = token_bytes(seq.token_slice(first * bs, (num_blocks - first) * bs))[1:]
            step = 8 * bs  # (token_bytes' 8 bytes per id; each block's keys are its own run, tagged)
            for i in range(0, len(raw), step):
                hashes.append(chain_hash(hashes[-1] if hashes else None, b"t" + raw[i:i + step]))
        while len(hashes) < num_blocks:
            b = len(hashes)
            hashes.append(chain_hash(hashes[-1] if b else None, seq.block_keys(b * bs, bs)))
        return hashes[:num_blocks]

    def _prefix_hashes(self, seq: Sequence) -> list[bytes]:
        """Hashes of the full blocks before the last token (that one is always computed)."""
        if not (self.prefix_caching and seq.reuse_prefix):
            return []
        return self._hash_blocks(seq, (len(seq) - 1) // self.block_size)

    def _hits(self, hashes: list[bytes]) -> list[int]:
        hit = []
        if self.prefix_caching:
            for h in hashes:
                block = self.cached.get(h)
                if block is None:
                    break
                hit.append(block)
        return hit

    def cached_prefix_tokens(self, seq: Sequence) -> int:
        """How many leading tokens of ``seq`` the cache holds now (a probe; changes nothing)."""
        return len(self._hits(self._prefix_hashes(seq))) * self.block_size

    def pin_prefix(self, seq: Sequence) -> tuple[int, list[int]]:
        """Like ``cached_prefix_tokens``, and the blocks holding them stay cached (out of the
        free list) until ``unpin``: a probe's answer then holds until the request ends."""
        hits = self._hits(self._prefix_hashes(seq))
        for block_id in hits:
            self._ref(block_id)
        return len(hits) * self.block_size, hits

    def unpin(self, block_ids: list[int]) -> None:
        for block_id in block_ids:
            self._unref(block_id)

    def blocks_needed(self, seq: Sequence) -> int:
        return -(-len(seq) // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._hits(self._prefix_hashes(seq))
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        return self.blocks_needed(seq) - len(hits) + revived <= self.num_free

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its current tokens, reusing cached prefix blocks."""
        assert not seq.block_table, f"{seq.rid} already has blocks"
        hashes = self._prefix_hashes(seq)
        hits = self._hits(hashes)
        self.queries += len(hashes)
        self.hits += len(hits)
        for block_id in hits:
            self._ref(block_id)
        seq.block_table = list(hits)
        for _ in range(self.blocks_needed(seq) - len(hits)):
            seq.block_table.append(self._take())
        seq.num_cached = seq.num_computed = len(hits) * self.block_size

    # --- growth -------------------------------------------------------------------------------
    def can_append(self, seq: Sequence, new_tokens: int = 1) -> bool:
        need = -(-(len(seq) + new_tokens) // self.block_size) - len(seq.block_table)
        return max(0, need) <= self.num_free

    def may_append(self, seq: Sequence) -> None:
        """Make room for the token just appended to ``seq``."""
        while len(seq.block_table) * self.block_size < len(seq):
            seq.block_table.append(self._take())

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register hashes of blocks whose K/V are now fully computed, for later requests."""
        if not self.prefix_caching:
            return
        full = seq.num_computed // self.block_size
        hashes = self._hash_blocks(seq, full)
        for b in range(seq.committed, full):  # blocks before the watermark were offered already
            block, digest = self.blocks[seq.block_table[b]], hashes[b]
            if block.hash is None and digest not in self.cached:  # else an identical block is cached
                block.hash = digest
                self.cached[digest] = block.id
        seq.committed = max(seq.committed, full)

    # --- release ------------------------------------------------------------------------------
    def free_seq(self, seq: Sequence) -> None:
        # Free the tail first so that, evicting from the front, prefixes outlive their suffixes.
        for block_id in reversed(seq.block_table):
            self._unref(block_id)
        seq.block_table = []
        seq.num_computed = seq.committed = 0

    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def _unref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        assert block.ref_count >= 0, f"block {block_id} freed twice"
        if block.ref_count == 0:
            self.free[block_id] = None

    def _take(self) -> int:
        if not self.free:
            raise RuntimeError("out of KV blocks (the scheduler must check can_allocate/can_append)")
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # evict the cached content
            if self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.hash = None
        block.ref_count = 1
        return block_id
