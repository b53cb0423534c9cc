"""Measuring a step's width: the narrowest width near the best rows/s, probing wider only while
doubling pays, and never at or past a width that ran out of memory. A fake clock stands in for
the model call's time, so the choice is exact."""
import pytest
import torch

from omnistage.diffusion import widths
from omnistage.diffusion.widths import measure_width


class Model:
    """A model call whose time is ``cost(rows)`` seconds on the fake clock."""

    def __init__(self, monkeypatch, cost, oom_from=None):
        self.now, self.cost, self.oom_from, self.calls = 0.0, cost, oom_from, []
        monkeypatch.setattr(widths.time, "perf_counter", lambda: self.now)

    def __call__(self, rows):
        self.calls.append(rows)
        if self.oom_from is not None and rows >= self.oom_from:
            raise torch.OutOfMemoryError("CUDA out of memory")
        self.now += self.cost(rows)


def test_it_widens_while_doubling_pays_and_keeps_the_narrowest_near_the_best(monkeypatch):
    model = Model(monkeypatch, lambda rows: (2 + rows) / 1000)  # a call's overhead, then per-row work
    width = measure_width(model, 128, "cpu")
    # rows/s: 16 -> 64 gained 9.1% over two doublings (< 10%): stop; 32 rows is 97% of 64's (>= 95%)
    assert list(width.seconds) == [1, 2, 4, 8, 16, 32, 64] and width.stop == "gain"
    assert width.rows == 32
    assert model.calls[0] == 1 and model.calls.count(32) == widths.REPEATS  # a warm-up, then best of two


def test_a_width_that_runs_out_of_memory_is_never_used(monkeypatch):
    model = Model(monkeypatch, lambda rows: (10 + rows) / 1000, oom_from=8)
    width = measure_width(model, 64, "cpu")
    assert width.stop == "memory" and list(width.seconds) == [1, 2, 4] and width.rows == 4


def test_it_stops_at_a_slow_call_and_at_max_rows(monkeypatch):
    slow = measure_width(Model(monkeypatch, lambda rows: 1.5 * rows), 64, "cpu")
    assert slow.stop == "slow" and list(slow.seconds) == [1, 2] and slow.rows == 1  # (no gain from 2 rows)
    capped = measure_width(Model(monkeypatch, lambda rows: (100 + rows) / 1000), 24, "cpu")
    assert capped.stop == "max_rows" and list(capped.seconds) == [1, 2, 4, 8, 16, 24] and capped.rows == 24


def test_a_slow_model_is_called_once_and_runs_one_row(monkeypatch):
    model = Model(monkeypatch, lambda rows: 5.0 * rows)  # (a video model: seconds a call)
    width = measure_width(model, 64, "cpu")
    assert model.calls == [1] and width.stop == "slow" and width.rows == 1


def test_one_row_that_does_not_fit_is_an_error(monkeypatch):
    with pytest.raises(torch.OutOfMemoryError, match="one row"):
        measure_width(Model(monkeypatch, lambda rows: 0.001, oom_from=1), 64, "cpu")
