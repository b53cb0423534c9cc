"""The GPU budget: shares declared or divided in proportion to need, an over-committed card
refused with every replica's numbers, each card on its own."""
import pytest

from omnistage.graph.gpu_budget import CONTEXT_BYTES, GIB, GpuBudgetError, Need, divide


def need(stage, device="cuda:0", weights=10, kv_min=0, declared=None, replica=0):
    return Need(stage, replica, device, int(weights * GIB), int(1 * GIB), kv_min=int(kv_min * GIB), declared=declared)


def test_undeclared_replicas_divide_what_is_left_in_proportion_to_their_needs():
    llm, vae = need("llm", weights=14, kv_min=1), need("vae", weights=0.5)
    budget = divide([llm, vae], {"cuda:0": 80 * GIB})["cuda:0"]
    assert sum(budget.shares) == pytest.approx(0.9)
    assert budget.shares[0] / budget.shares[1] == pytest.approx(llm.least / vae.least)
    assert budget.share("vae", 0) == budget.shares[1] and budget.share("vae", 1) is None


def test_declared_shares_are_kept_and_the_rest_divided():
    budget = divide([need("llm", declared=0.6), need("dit", weights=5)], {"cuda:0": 80 * GIB})["cuda:0"]
    assert budget.shares == pytest.approx((0.6, 0.3))


def test_a_lone_replica_gets_the_default_utilization():
    assert divide([need("llm")], {"cuda:0": 80 * GIB})["cuda:0"].shares == pytest.approx((0.9,))


def test_declared_shares_past_the_card_are_refused_with_the_numbers():
    with pytest.raises(GpuBudgetError) as err:
        divide([need("thinker", declared=0.7), need("talker", weights=2, declared=0.4)], {"cuda:0": 80 * GIB})
    text = str(err.value)
    assert "cuda:0 is over-committed: the shares add up to 1.100 of the card" in text
    assert "thinker[0]" in text and "talker[0]" in text and "cuda:0: 80.0 GiB" in text
    assert "resources.gpu_memory_utilization" in text


def test_a_share_below_what_the_replica_needs_is_refused():
    # 20 GiB of weights + 1 activations + 2 KV + context do not fit in 0.25 of 80 GiB
    with pytest.raises(GpuBudgetError, match=r"llm\[0\] needs at least 23.5 GiB and its share is 20.0 GiB"):
        divide([need("llm", weights=20, kv_min=2, declared=0.25)], {"cuda:0": 80 * GIB})
    assert CONTEXT_BYTES == GIB // 2


def test_undeclared_replicas_that_do_not_fit_what_is_left_are_refused():
    with pytest.raises(GpuBudgetError, match=r"vae\[0\] needs at least"):
        divide([need("llm", declared=0.9), need("vae", weights=1)], {"cuda:0": 24 * GIB})


def test_each_card_is_divided_on_its_own():
    budgets = divide([need("a", "cuda:0", weights=30), need("b", "cuda:1", weights=30)],
                     {"cuda:0": 40 * GIB, "cuda:1": 40 * GIB})
    assert [b.shares for b in budgets.values()] == [pytest.approx((0.9,))] * 2
    with pytest.raises(GpuBudgetError, match="cuda:0"):  # the same two on one card do not fit
        divide([need("a", weights=30), need("b", weights=30)], {"cuda:0": 40 * GIB})
