"""Run under TRITON_INTERPRET=1: the kernels address a KV cache past 2^31 elements.

The cache is a sparse file mapped into memory (several GiB it never allocates): the kernels
store and read slots at its end, and the file then holds only the pages they touched. The
reference runs on a compact copy of the blocks used, so it never reads the whole cache either.
Two sizes: K half past 2^31 elements (its slot offsets need 64 bits), and K half just under
it (its V half starts below 2^31, the V offsets pass it)."""
import os
import sys
import tempfile

import torch

from omnistage.ar_engine.attention import decode_attention
from omnistage.ar_engine.kernels.triton_attention import paged_decode_attention, store_kv

BLOCK, KV_HEADS, HEADS, HEAD_DIM = 16, 2, 4, 64
SLOT_ELEMENTS = KV_HEADS * HEAD_DIM
PAGE_LIMIT = 64 << 20  # bytes the file may hold after the run: the pages touched, not the cache


def mapped_cache(path: str, num_slots: int) -> torch.Tensor:
    elements = 2 * num_slots * SLOT_ELEMENTS
    with open(path, "wb") as f:
        f.truncate(elements * 2)  # sparse: no page allocated yet
    flat = torch.from_file(path, shared=True, size=elements, dtype=torch.float16)
    return flat.view(2, num_slots, KV_HEADS, HEAD_DIM)


def check(num_slots: int) -> None:
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kv")
        cache = mapped_cache(path, num_slots)
        last_block = num_slots // BLOCK - 1
        blocks = torch.tensor([last_block - 2 * i for i in range(6)], dtype=torch.int32)  # the cache's end
        slots = (blocks.long()[:, None] * BLOCK + torch.arange(BLOCK)).flatten()
        key = torch.randn(len(slots), KV_HEADS, HEAD_DIM, generator=g).half()
        value = torch.randn(len(slots), KV_HEADS, HEAD_DIM, generator=g).half()
        store_kv(cache, key, value, slots)
        assert torch.equal(cache[0, slots], key) and torch.equal(cache[1, slots], value), "store_kv past 2^31"
        ctx_lens = torch.tensor([3 * BLOCK + 5, 6 * BLOCK, 1], dtype=torch.int32)
        tables = torch.stack([blocks, blocks.flip(0), blocks.roll(1)])
        q = torch.randn(len(ctx_lens), HEADS, HEAD_DIM, generator=g).half()
        got = paged_decode_attention(q, cache, tables, ctx_lens, BLOCK, HEAD_DIM ** -0.5).float()
        compact = torch.stack([cache[:, b * BLOCK:(b + 1) * BLOCK] for b in blocks.tolist()], dim=1)
        compact = compact.reshape(2, -1, KV_HEADS, HEAD_DIM).float()
        index = {b: i for i, b in enumerate(blocks.tolist())}
        local = tables.clone().apply_(index.__getitem__)
        want = decode_attention(q.float(), compact, local, ctx_lens, BLOCK, HEAD_DIM ** -0.5)
        err = (got - want).abs().max().item()
        assert err < 2e-3, f"decode attention past 2^31 differs by {err} ({num_slots} slots)"
        held = os.stat(path).st_blocks * 512
        assert held < PAGE_LIMIT, f"the cache file holds {held >> 20} MiB: the kernels touched more than their slots"
        print(f"{num_slots} slots ({2 * num_slots * SLOT_ELEMENTS / 2 ** 31:.2f} x 2^31 elements): "
              f"equal, {held >> 10} KiB touched")


if __name__ == "__main__":
    check((1 << 31) // SLOT_ELEMENTS + (1 << 20))  # the K half alone passes 2^31 elements
    check((1 << 31) // SLOT_ELEMENTS - (1 << 10))  # the V half starts just under 2^31
    print("kernels address past 2^31 elements")
    sys.exit(0)
