"""End to end: real worker processes linked by ZeroMQ, driven through the Pipeline API."""
import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from omnistage import Pipeline
from omnistage.errors import RequestRejected, StageDeadError, StageStartError
from omnistage.examples_lib import shout
from tests.conftest import ROOT

PROMPTS = ["Hello there", "Describe the image in one sentence.", "Numbers: 1 2 3",
           "Tell me a story about a cat who learned to sing", "red green blue", "What is the weather like today?"]


def _msgs(p):
    return [{"role": "user", "content": p}]


@pytest.fixture(scope="module")
def two_stage():
    with Pipeline.from_yaml(ROOT / "examples" / "chat_postprocess.yaml") as pipe:
        yield pipe


@pytest.fixture(scope="module")
def chat():
    with Pipeline.from_yaml(ROOT / "examples" / "text_chat.yaml") as pipe:
        yield pipe


def test_concurrent_requests_equal_hf_generate_through_two_stages(two_stage, hf_greedy):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: two_stage.generate(messages=_msgs(p), temperature=0, max_tokens=16),
                                PROMPTS))
    for prompt, result in zip(PROMPTS, results):
        tokens, text = hf_greedy(messages=_msgs(prompt), max_tokens=16)
        assert result.text == shout(text)
        assert result.usage["completion_tokens"] == len(tokens)
        assert set(result.meta) == {"llm", "shout"}


def test_streamed_text_equals_non_streamed(chat):
    params = dict(messages=_msgs("Tell me a story"), temperature=0.8, seed=3, max_tokens=20)
    chunks = [c.value for c in chat.stream(**params)]
    assert len(chunks) > 1
    assert "".join(chunks) == chat.generate(**params).text


def test_async_api(chat, hf_greedy):
    async def main():
        return await asyncio.gather(*(chat.agenerate(prompt=p, temperature=0, max_tokens=8) for p in PROMPTS[:3]))
    for prompt, result in zip(PROMPTS, asyncio.run(main())):
        assert result.text == hf_greedy(prompt=prompt, max_tokens=8)[1]


def test_bad_requests_get_clear_errors_and_the_graph_keeps_serving(chat):
    with pytest.raises(RequestRejected, match="does not accept images"):
        chat.generate(messages=_msgs("hi"), images=["x.png"])
    with pytest.raises(RequestRejected, match="offers: logprobs, text"):
        chat.generate(messages=_msgs("hi"), modalities=["audio"])
    with pytest.raises(RequestRejected, match="temperature must be between 0 and 2") as info:
        chat.generate(messages=_msgs("hi"), temperature=5)
    assert info.value.status == 400
    with pytest.raises(RequestRejected, match="unknown parameter 'max_token'; did you mean 'max_tokens'?") as info:
        chat.submit(messages=_msgs("hi"), max_token=5)
    assert (info.value.status, info.value.param) == (400, "max_token")
    for bad in ({"seed": 2 ** 70}, {"stop": 5}, {"logprobs": "abc"}, {"voice": "alloy"}):
        with pytest.raises(RequestRejected) as info:
            chat.submit(messages=_msgs("hi"), **bad)
        assert (info.value.status, info.value.param) == (400, next(iter(bad)))
    assert not chat.orchestrator.requests  # refused before anything was sent to a stage
    assert chat.generate(prompt="still here", temperature=0, max_tokens=4).usage["completion_tokens"] >= 1


def test_in_process_twin_gives_the_same_text(hf_greedy):
    with Pipeline.from_yaml(ROOT / "examples" / "chat_postprocess.yaml", in_process=True) as pipe:
        result = pipe.generate(messages=_msgs(PROMPTS[0]), temperature=0, max_tokens=16)
    assert result.text == shout(hf_greedy(messages=_msgs(PROMPTS[0]), max_tokens=16)[1])


def test_killed_worker_fails_its_requests_then_is_restarted_and_shutdown_cleans_up():
    pipe = Pipeline.from_yaml(ROOT / "examples" / "text_chat.yaml")
    orch = pipe.orchestrator
    llm = orch.table.of("llm")[0]
    handles = [pipe.submit(prompt=p, temperature=0, max_tokens=100_000, ignore_eos=True) for p in PROMPTS[:3]]
    events = handles[0].events(timeout=60)
    next(events)  # the first text chunk: the request is mid-generation
    os.kill(llm.runtime.pid, 9)
    start = time.monotonic()
    for handle in handles:
        with pytest.raises(StageDeadError, match="stage 'llm' replica 0 died"):
            handle.result(timeout=10)
    assert time.monotonic() - start < 1
    # Until its replacement is ready the stage refuses at once (503) and says why.
    with pytest.raises(RequestRejected, match="no live replica") as info:
        pipe.submit(prompt="x")
    assert info.value.status == 503
    assert orch.table.readiness()["llm"] in (
        "loading", "no ready replica (llm[0] died: its process exited (killed by SIGKILL); restarting now)")
    assert orch.table.wait_until(lambda: orch.table.ready_count("llm") == 1, 60)
    assert time.monotonic() - start < 30
    [restart] = orch.supervisor.log
    assert (restart.stage, restart.replica, restart.new_replica) == ("llm", 0, 1) and "SIGKILL" in restart.reason
    after = pipe.submit(prompt="Hello", temperature=0, max_tokens=4, ignore_eos=True).result(timeout=30)
    assert after.usage["completion_tokens"] == 4
    pids = [llm.runtime.pid] + [r.runtime.pid for r in orch.table.all()]
    pipe.close()
    assert not any(_alive(pid) for pid in pids)
    assert not list(Path("/dev/shm").glob(f"omnistage-{orch.session}-*"))
    assert not Path(orch.run_dir).exists()


def test_an_output_the_wire_cannot_carry_fails_its_request_and_the_stage_serves_on():
    """A user function returning a numpy scalar: encoding its output fails in the worker's sending
    thread; the request fails with a 500 (it never hangs), the replica and its other requests go on."""
    from omnistage.errors import RequestFailed
    with Pipeline.from_yaml(Path(__file__).parent / "graphs" / "unsendable_output.yaml") as pipe:
        with pytest.raises(RequestFailed, match="could not send its output"):
            pipe.submit(prompt="numpy please").result(timeout=30)
        assert pipe.submit(prompt="plain please").result(timeout=30).outputs["text"] == 12.0
        [replica] = pipe.orchestrator.table.all()
        assert not replica.inflight and replica.stats.get("internal_errors", 1) >= 0


def test_worker_that_cannot_start_reports_why():
    with pytest.raises(StageStartError, match="no_such_function"):
        Pipeline.from_yaml(Path(__file__).parent / "graphs" / "bad_function.yaml")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_abort_stops_the_request_in_its_stage(chat):
    endless = chat.submit(prompt="Hello", temperature=0, max_tokens=1_000_000, ignore_eos=True)
    next(endless.events(timeout=60))
    chat.orchestrator.abort(endless.rid)
    # The ar stage runs one batch at a time: this finishes only if the endless request is gone.
    assert chat.generate(prompt="after", temperature=0, max_tokens=4, timeout=30).usage["completion_tokens"] >= 1
    assert not chat.orchestrator.requests


ORPHAN = """
import sys
from omnistage import Pipeline
if __name__ == "__main__":
    pipe = Pipeline.from_yaml(sys.argv[1])
    print(" ".join(str(r.runtime.pid) for r in pipe.orchestrator.table.all()), flush=True)
    sys.stdin.read()
"""


def test_workers_exit_when_their_orchestrator_is_killed(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "host.py"
    script.write_text(ORPHAN)
    host = subprocess.Popen([sys.executable, str(script), str(ROOT / "examples" / "chat_postprocess.yaml")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in host.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    host.kill()
    host.wait()
    assert _wait_until(lambda: not any(_alive(p) for p in pids), timeout=10)


def _wait_until(condition, timeout):
    import threading
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        tick.wait(0.05)
    return condition()


def test_prefill_and_decode_as_separate_workers_equal_hf_generate(hf_greedy):
    with Pipeline.from_yaml(ROOT / "examples" / "text_chat_pd.yaml") as pipe:
        handles = [pipe.submit(messages=_msgs(p), temperature=0, max_tokens=16) for p in PROMPTS]
        results = [h.result(timeout=60) for h in handles]
    for prompt, result in zip(PROMPTS, results):
        tokens, text = hf_greedy(messages=_msgs(prompt), max_tokens=16)
        assert result.text == text
        assert result.usage["completion_tokens"] == len(tokens)


def test_undecodable_image_is_a_400_and_the_stage_lives_on():
    from omnistage.checkpoints import resolve_model
    from omnistage.graph.compile import compile_text
    text = (ROOT / "examples" / "text_chat.yaml").read_text().replace("tiny:qwen2", "tiny:qwen2-vl")
    text = text.replace("inputs: {messages: request.messages, prompt: request.prompt}",
                        "inputs: {messages: request.messages, images: request.images}")
    with Pipeline(compile_text(text, resolve_model, base_dir=ROOT / "examples")) as pipe:
        image_msg = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}]
        with pytest.raises(RequestRejected, match="cannot decode image") as info:
            pipe.generate(messages=image_msg, images=[b"not an image"], temperature=0, max_tokens=4)
        assert info.value.status == 400
        with pytest.raises(RequestRejected, match="cannot decode image") as info:  # whole header, no pixels
            pipe.generate(messages=image_msg, images=[_png()[:60]], temperature=0, max_tokens=4)
        assert info.value.status == 400
        with pytest.raises(RequestRejected, match="placeholder"):
            pipe.generate(messages=_msgs("no placeholder"), images=[_png()], temperature=0, max_tokens=4)
        result = pipe.generate(messages=image_msg, images=[_png()], temperature=0, max_tokens=4)
        assert result.usage["completion_tokens"] >= 1
        from PIL import Image
        pil = pipe.generate(messages=image_msg, images=[Image.new("RGB", (64, 48), (200, 30, 30))], temperature=0,
                            max_tokens=4)
        assert pil.text == result.text  # a PIL image travels as lossless PNG
        with pytest.raises(RequestRejected, match=r"images\[0\]: a object cannot be sent") as info:
            pipe.submit(messages=image_msg, images=[object()])
        assert info.value.param == "images"


def _png():
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()
