"""Functions the test graphs' python stages call (imported by the worker processes)."""
import numpy as np


def numpy_score(text: str) -> np.float64:
    """A numpy scalar, which the wire cannot carry, unless the text asks for a plain float."""
    value = np.float64(len(text))
    return float(value) if text.startswith("plain") else value


def environment(text: str) -> str:
    """The value of the environment variable named ``text`` in the worker ('' if unset)."""
    import os
    return os.environ.get(text, "")


def torch_threads(text: str) -> str:
    """How many threads torch runs this step on, in the worker."""
    import torch
    return str(torch.get_num_threads())


def pause(text: str) -> str:
    """Sleeps ``text`` seconds ("fail": raises)."""
    import time
    if text == "fail":
        raise RuntimeError("asked to fail")
    time.sleep(float(text))
    return text
