"""Tensor-parallel replicas served through real workers: an ar stage over two ranks, and a
prefill -> decode hand-off between two-rank replicas (the prompt's KV gathered from both ranks,
then split again), answer as one device does; a rank that dies takes its replica's requests
with it and the replica comes back; a graph that cannot be split is refused at validation."""
import os
import signal
import subprocess
import time

import pytest
import yaml

from omnistage import Pipeline
from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.support import check_model
from omnistage.errors import GraphConfigError, RequestFailed
from omnistage.graph.compile import compile_text
from omnistage.stages.runtime.replicas import ReplicaState
from tests.conftest import ROOT

ASKS = [dict(prompt="Tell me a story about a cat " * 4, max_tokens=12, temperature=0, logprobs=1, modalities=["text", "logprobs"]),
        dict(messages=[{"role": "user", "content": "Hello there"}], max_tokens=12, temperature=0, logprobs=1, modalities=["text", "logprobs"]),
        dict(prompt="Numbers: 1 2 3", max_tokens=12, temperature=0, ignore_eos=True, logprobs=1, modalities=["text", "logprobs"])]


def split(example: str, tmp_path, tp: dict[str, int], **options) -> str:
    graph = yaml.safe_load((ROOT / "examples" / example).read_text())
    for stage, size in tp.items():
        graph["stages"][stage]["resources"] = {"tensor_parallel": size, "threads": 1}
        graph["stages"][stage].setdefault("options", {}).update(options)
    path = tmp_path / example
    path.write_text(yaml.safe_dump(graph))
    return str(path)


@pytest.fixture(scope="module")
def one_device():
    with Pipeline.from_yaml(ROOT / "examples" / "text_chat.yaml", in_process=True) as pipe:
        return [pipe.generate(**ask).outputs for ask in ASKS]


def answers(pipe) -> list[dict]:
    handles = [pipe.submit(**ask) for ask in ASKS]  # together: one batch
    return [h.result(120).outputs for h in handles]


def same(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want):
        assert g["text"] == w["text"]
        for a, b in zip(g["logprobs"], w["logprobs"]):
            assert a["token"] == b["token"]
            if a["logprob"] is not None:  # (a decode stage has no logprob for the token prefill chose)
                assert abs(a["logprob"] - b["logprob"]) <= 1e-4


def test_an_ar_stage_over_two_ranks_answers_as_one_device(one_device, tmp_path):
    with Pipeline.from_yaml(split("text_chat.yaml", tmp_path, {"llm": 2}, max_tokens_per_step=16)) as pipe:
        same(answers(pipe), one_device)
        again = pipe.generate(**ASKS[0])  # its prompt's blocks come from the prefix cache
        assert again.meta["llm"]["cached_tokens"] > 0 and again.outputs["text"] == one_device[0]["text"]


def test_prefill_and_decode_over_two_ranks_hand_off_the_whole_kv(one_device, tmp_path):
    with Pipeline.from_yaml(split("text_chat_pd.yaml", tmp_path, {"prefill": 2, "decode": 2})) as pipe:
        same(answers(pipe), one_device)
    with Pipeline.from_yaml(split("text_chat_pd.yaml", tmp_path, {"prefill": 2})) as pipe:  # into one device
        same(answers(pipe), one_device)


def ranks() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "omnistage.stages.kinds.ar_ranks"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_dead_rank_fails_its_requests_and_the_replica_restarts(tmp_path):
    with Pipeline.from_yaml(split("text_chat.yaml", tmp_path, {"llm": 2})) as pipe:
        pipe.generate(**ASKS[0])
        (rank,) = ranks()
        handle = pipe.submit(prompt="long", max_tokens=4000, ignore_eos=True)
        next(handle.events(60))  # its first tokens: it is decoding
        os.kill(rank, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(RequestFailed, match="crashed: RuntimeError: .*Connection"):
            handle.result(60)
        assert time.monotonic() - started < 10
        table = pipe.orchestrator.table
        assert table.wait_until(lambda: any(r.index > 0 for r in table.of("llm", state=ReplicaState.READY)), 120), \
            "no replica took the dead one's place"
        assert pipe.generate(**ASKS[1]).outputs["text"]  # after the restart
    deadline = time.monotonic() + 10
    while ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ranks()  # no rank outlives its pipeline


def test_what_cannot_be_split_is_refused_at_validation(tmp_path):
    def compile_(example, stage, size, model=None):
        graph = yaml.safe_load((ROOT / "examples" / example).read_text())
        graph["stages"][stage]["resources"] = {"tensor_parallel": size}
        if model:
            graph["models"][next(iter(graph["models"]))]["path"] = model
        return compile_text(yaml.safe_dump(graph), resolve_model, base_dir=ROOT / "examples", check=check_model)

    with pytest.raises(GraphConfigError, match=r"stages.denoise.resources.tensor_parallel.*runs on one device"):
        compile_("text_to_image_split.yaml", "denoise", 2)
    with pytest.raises(GraphConfigError, match=r"tensor_parallel 4 does not divide its num_key_value_heads \(2\)"):
        compile_("text_chat.yaml", "llm", 4)
    with pytest.raises(GraphConfigError, match="tensor_parallel runs .*not Qwen2VLForConditionalGeneration"):
        compile_("text_chat.yaml", "llm", 2, "tiny:qwen2-vl")
    with pytest.raises(GraphConfigError, match="tensor_parallel must be > 0"):
        compile_("text_chat.yaml", "llm", 0)
