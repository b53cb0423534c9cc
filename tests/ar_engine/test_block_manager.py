from omnistage.ar_engine.block_manager import BlockManager
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.ar_engine.sequence import MediaSpan, Sequence


def seq(rid, tokens, media=()):
    return Sequence(rid, list(tokens), SamplingParams(max_tokens=4), media)


def computed(bm, s):
    bm.allocate(s)
    s.num_computed = len(s) - 1
    bm.commit_full_blocks(s)
    return s


IMG = 9  # placeholder token id


def test_blocks_are_shared_by_reference_and_revived_after_free():
    bm = BlockManager(8, 4)
    a = computed(bm, seq("a", range(9)))
    b = seq("b", list(range(8)) + [50, 51])
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.num_cached == 8
    assert bm.blocks[a.block_table[0]].ref_count == 2
    bm.free_seq(a)
    bm.free_seq(b)
    assert bm.num_free == 8
    c = seq("c", list(range(8)) + [60])
    bm.allocate(c)
    assert c.num_cached == 8  # the freed blocks kept their content


def test_lru_eviction_takes_oldest_free_blocks_and_suffixes_first():
    bm = BlockManager(4, 2)
    a = computed(bm, seq("a", [1, 2, 3, 4, 5]))  # blocks: [1,2] [3,4] [5]
    bm.free_seq(a)
    bm.allocate(seq("x", [7, 8]))  # one block: evicts the oldest free one, a's tail
    again = seq("a2", [1, 2, 3, 4, 5])
    assert bm.can_allocate(again)
    bm.allocate(again)
    assert again.num_cached == 4  # the prefix blocks survived


def test_media_hash_decides_reuse():
    bm = BlockManager(32, 4)
    tokens = [1, 2, IMG, IMG, IMG, IMG, IMG, IMG, 3, 4]
    red = (MediaSpan(2, 6, "red"),)
    computed(bm, seq("a", tokens, red))
    same = seq("b", tokens, red)
    bm.allocate(same)
    assert same.num_cached == 8
    one_pixel_off = seq("c", tokens, (MediaSpan(2, 6, "red-but-one-pixel"),))
    bm.allocate(one_pixel_off)
    assert one_pixel_off.num_cached == 0
    moved = [1, 2, 5, IMG, IMG, IMG, IMG, IMG, IMG, 4]  # same image one position later
    shifted = seq("d", moved, (MediaSpan(3, 6, "red"),))
    bm.allocate(shifted)
    assert shifted.num_cached == 0


def test_can_allocate_counts_revived_blocks():
    bm = BlockManager(3, 2)
    a = computed(bm, seq("a", [1, 2, 3, 4, 5]))
    bm.free_seq(a)
    assert bm.can_allocate(seq("b", [1, 2, 3, 4, 6]))  # two revived + one new = 3 blocks
    assert not bm.can_allocate(seq("c", list(range(20, 27))))


def test_pinned_prefix_outlives_eviction_until_unpinned():
    bm = BlockManager(4, 2)
    a = computed(bm, seq("a", [1, 2, 3, 4, 5]))  # blocks: [1,2] [3,4] [5]
    bm.free_seq(a)
    covered, pinned = bm.pin_prefix(seq("b", [1, 2, 3, 4, 6]))
    assert covered == 4 and len(pinned) == 2 and bm.num_free == 2
    for rid in ("x", "y"):  # take every free block, twice over: only unpinned ones are evicted
        other = seq(rid, [7, 8, 9, 10])
        bm.allocate(other)
        bm.free_seq(other)
    assert bm.cached_prefix_tokens(seq("b", [1, 2, 3, 4, 6])) == 4
    bm.unpin(pinned)
    assert bm.num_free == 4


def test_token_blocks_hash_as_their_keys_chained():
    from omnistage.ar_engine.block_manager import chain_hash
    s = seq("a", [5, 1 << 40, 7, 0, 3, 2, 9, 11, 4])
    bm = BlockManager(8, 4)
    want, parent = [], None
    for b in range(2):
        parent = chain_hash(parent, s.block_keys(4 * b, 4))
        want.append(parent)
    assert bm._hash_blocks(s, 1) == want[:1]  # extended a block at a time or all at once: the same
    assert bm._hash_blocks(s, 2) == want
    assert BlockManager(8, 4)._hash_blocks(seq("b", s.tokens), 2) == want
