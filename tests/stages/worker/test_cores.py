"""Threads that follow a host's load: replicas sharing a core board."""
import time

import pytest
import torch

from omnistage.stages.worker import cores
from omnistage.stages.worker.cores import CoreShare, board_path, clear_slot, create_board


@pytest.fixture
def board(tmp_path):
    create_board(str(tmp_path))
    return board_path(str(tmp_path))


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_busy_replicas_split_the_cores_and_an_idle_one_gives_its_share_back(board):
    a, b, c = (CoreShare(board, slot, cores=4) for slot in (0, 7, 200))
    assert a.threads_for_step() == 4  # alone
    assert b.threads_for_step() == 2
    assert c.threads_for_step() == 1  # 4 // 3
    b.idle()
    c.idle()
    assert a.threads_for_step() == 4
    with pytest.raises(ValueError, match="slot 256"):
        CoreShare(board, 256, cores=4)


def test_a_replica_that_dies_mid_step_frees_its_share_when_its_step_should_be_over(board, monkeypatch):
    monkeypatch.setattr(cores, "MIN_HORIZON_S", 0.05)
    a, dead = CoreShare(board, 0, cores=2), CoreShare(board, 1, cores=2)
    dead.threads_for_step()  # and never clears its slot
    assert a.threads_for_step() == 1
    time.sleep(0.1)
    assert a.threads_for_step() == 2


def test_a_step_runs_on_its_share_and_a_long_one_follows_the_others_while_it_runs(board, keep_threads):
    mine, other = CoreShare(board, 0, cores=2), CoreShare(board, 1, cores=2)
    mine.before_step()
    assert torch.get_num_threads() == 2
    mine.after_step(0.5)  # a long step: the next one looks at the board while it runs
    mine.before_step()
    other.threads_for_step()  # another replica starts working mid-step
    time.sleep(cores.RECHECK_S)
    torch.nn.Linear(4, 4)(torch.ones(1, 4))  # any module's forward is a point to look again
    assert torch.get_num_threads() == 1
    mine.after_step(0.001)
    mine.before_step()  # short steps again: no looking mid-step
    other.idle()
    time.sleep(cores.RECHECK_S)
    torch.nn.Linear(4, 4)(torch.ones(1, 4))
    assert torch.get_num_threads() == 1
    mine.close()


def test_a_cleared_slot_no_longer_counts(board, tmp_path):
    a, dead = CoreShare(board, 0, cores=2), CoreShare(board, 9, cores=2)
    dead.threads_for_step()  # died mid-step; the launcher hands its slot to a new replica
    clear_slot(str(tmp_path), 9)
    assert a.threads_for_step() == 2
