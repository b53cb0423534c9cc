"""The GPU budget: shares declared or divided in proportion to need, an over-committed card
refused with every replica's numbers, each card on its own."""
import pytest

from omnistage.graph.gpu_budget import CONTEXT_BYTES, GIB, GpuBudgetError, Need, divide


def need(stage, device="cuda:0", weights=10, kv_min=0, declared=None, replica=0, tp=1):
    return Need(stage, replica, device, int(weights * GIB), int(1 * GIB), kv_min=int(kv_min * GIB), declared=declared,
                tp=tp)


CONTEXT = CONTEXT_BYTES / (80 * GIB)  # one CUDA context, as a share of an 80 GiB card


def test_undeclared_replicas_divide_what_is_left_in_proportion_to_their_needs():
    llm, vae = need("llm", weights=14, kv_min=1), need("vae", weights=0.5)
    budget = divide([llm, vae], {"cuda:0": 80 * GIB})["cuda:0"]
    assert sum(budget.shares) == pytest.approx(0.9 - 2 * CONTEXT)  # (the contexts lie outside the shares)
    assert budget.shares[0] / budget.shares[1] == pytest.approx(llm.least / vae.least)
    assert budget.share("vae", 0) == budget.shares[1] and budget.share("vae", 1) is None


def test_declared_shares_are_kept_and_the_rest_divided():
    budget = divide([need("llm", declared=0.6), need("dit", weights=5)], {"cuda:0": 80 * GIB})["cuda:0"]
    assert budget.shares == pytest.approx((0.6, 0.3 - 2 * CONTEXT))


def test_a_lone_replica_gets_the_default_utilization():
    assert divide([need("llm")], {"cuda:0": 80 * GIB})["cuda:0"].shares == pytest.approx((0.9 - CONTEXT,))


def test_declared_shares_past_the_card_are_refused_with_the_numbers():
    with pytest.raises(GpuBudgetError) as err:
        divide([need("thinker", declared=0.7), need("talker", weights=2, declared=0.4)], {"cuda:0": 80 * GIB})
    text = str(err.value)
    assert ("cuda:0 is over-committed: the shares (1.100 of the card) and 2 CUDA context(s) of 512.0 MiB add up "
            "to 89.0 GiB") in text
    assert "thinker[0]" in text and "talker[0]" in text and "cuda:0: 80.0 GiB" in text
    assert "resources.gpu_memory_utilization" in text


def test_a_share_below_what_the_replica_needs_is_refused():
    # 20 GiB of weights + 1 activations + 2 KV do not fit in 0.25 of 80 GiB
    with pytest.raises(GpuBudgetError, match=r"llm\[0\] needs at least 23.0 GiB and its share is 20.0 GiB"):
        divide([need("llm", weights=20, kv_min=2, declared=0.25)], {"cuda:0": 80 * GIB})
    assert CONTEXT_BYTES == GIB // 2


def test_undeclared_replicas_that_do_not_fit_what_is_left_are_refused():
    with pytest.raises(GpuBudgetError, match=r"vae\[0\] needs at least"):
        divide([need("llm", declared=0.9), need("vae", weights=1)], {"cuda:0": 24 * GIB})


def test_each_card_is_divided_on_its_own():
    budgets = divide([need("a", "cuda:0", weights=30), need("b", "cuda:1", weights=30)],
                     {"cuda:0": 40 * GIB, "cuda:1": 40 * GIB})
    assert [b.shares for b in budgets.values()] == [pytest.approx((0.9 - CONTEXT_BYTES / (40 * GIB),))] * 2
    with pytest.raises(GpuBudgetError, match="cuda:0"):  # the same two on one card do not fit
        divide([need("a", weights=30), need("b", weights=30)], {"cuda:0": 40 * GIB})


def test_declared_shares_leave_room_for_the_cuda_contexts_outside_them():
    # two halves of the card fit in the allocator caps, but not with a context for each process
    with pytest.raises(GpuBudgetError, match=r"the shares \(1.000 of the card\) and 2 CUDA context"):
        divide([need("a", declared=0.5), need("b", declared=0.5)], {"cuda:0": 80 * GIB})
    budget = divide([need("a", declared=0.49), need("b", declared=0.49)], {"cuda:0": 80 * GIB})["cuda:0"]
    assert budget.used == pytest.approx(0.98 * 80 * GIB + 2 * CONTEXT_BYTES)


def test_the_ranks_of_a_tensor_parallel_replica_get_the_smallest_share_of_their_cards():
    # rank 1 shares cuda:1 with a VAE; rank 0 has cuda:0 alone, but sizes the cache for both
    ranks = [need("llm", "cuda:0", tp=2), need("llm", "cuda:1", tp=2)]
    budgets = divide([*ranks, need("vae", "cuda:1", weights=10)], {"cuda:0": 80 * GIB, "cuda:1": 80 * GIB})
    alone = divide(ranks, {"cuda:0": 80 * GIB, "cuda:1": 80 * GIB})
    assert budgets["cuda:0"].share("llm", 0) == budgets["cuda:1"].share("llm", 0) == budgets["cuda:1"].shares[0]
    assert budgets["cuda:0"].share("llm", 0) == pytest.approx((0.9 - 2 * CONTEXT) / 2)
    assert alone["cuda:0"].share("llm", 0) == pytest.approx(0.9 - CONTEXT)


def test_ranks_on_cards_of_different_sizes_get_the_same_bytes():
    ranks = [need("llm", "cuda:0", tp=2), need("llm", "cuda:1", tp=2)]
    budgets = divide(ranks, {"cuda:0": 80 * GIB, "cuda:1": 40 * GIB})
    held = [b.share("llm", 0) * b.total for b in budgets.values()]
    assert held[0] == pytest.approx(held[1]) == pytest.approx((0.9 - CONTEXT_BYTES / (40 * GIB)) * 40 * GIB)
