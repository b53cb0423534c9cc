"""A worker's input bookkeeping with streamed inputs (no I/O)."""
from omnistage.connectors.messages import Admit, Data, Part
from omnistage.stages.worker.gather import Gather


def admit(rid="r", expect=("states", "prompt"), streams=("states",)):
    return Admit(rid, list(expect), {}, {}, "sink", {}, list(streams))


def test_a_streamed_input_starts_the_request_with_its_first_part():
    g = Gather()
    assert not g.data(Part("r", "states", 1))  # before the Admit: kept
    assert not g.admit(admit())  # the whole 'prompt' has not come
    assert g.data(Data("r", "prompt", "hi"))
    inputs, open_ports = g.take("r")
    assert inputs == {"states": [1], "prompt": "hi"} and open_ports == {"states"}
    assert "r" in g.started


def test_a_stream_closed_before_the_start_is_not_open():
    g = Gather()
    g.admit(admit(expect=("states",)))
    assert g.data(Part("r", "states", 1))
    g2 = Gather()
    g2.admit(admit(expect=("states",)))
    g2.data(Part("r", "states", None, last=True))
    inputs, open_ports = g2.take("r")
    assert inputs == {"states": []} and open_ports == frozenset()


def test_parts_of_a_forgotten_request_are_dropped():
    g = Gather()
    g.admit(admit(expect=("states",)))
    g.forget("r")
    assert not g.data(Part("r", "states", 2)) and "r" not in g.started and "r" not in g.early
