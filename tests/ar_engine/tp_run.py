"""Run the AR engine over a tensor-parallel model and print what it generated, as JSON:
``python -m tests.ar_engine.tp_run MODEL_DIR TP STEP_TOKENS``. Rank 0 is this process; the
other ranks are the processes ``ar_ranks.start_ranks`` starts, as a served replica's are."""
import json
import sys

import torch

from omnistage.stages.kinds.ar import load_model
from omnistage.stages.kinds.ar_ranks import start_ranks
from tests.ar_engine.test_parallel import generate


def main() -> None:
    path, tp, step_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    start_ranks(tp, path, torch.float32, "cpu", 1)
    model = load_model(path, torch.float32, "cpu", tp_size=tp)
    out, engine = generate(model, step_tokens, tp)
    engine.runner.stop()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
