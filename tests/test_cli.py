from omnistage.cli import main


def test_demo_serves_the_default_graph_and_the_client_saves_its_results(capfd, tmp_path):
    import av
    from PIL import Image
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out  # the server and the client are child processes
    assert "server ready" in out and "server stopped" in out
    assert "The capital of France is Paris." in out  # SmolLM2-135M-Instruct, greedy
    assert "real weights: assistant (packaged:smollm2-135m-instruct)" in out
    assert "image chat: 24 tokens streamed" in out and "images: 2 x 32x32" in out and "video: 32x32" in out
    assert "speech: " in out and "transcribed back as" in out
    assert Image.open(tmp_path / "image-0.png").size == (32, 32)
    assert (tmp_path / "speech.wav").read_bytes()[:4] == b"RIFF"
    with av.open(str(tmp_path / "video.mp4")) as container:
        assert len(list(container.decode(video=0))) == 9


def test_run_prints_one_json_line_per_prompt(capsys):
    import json

    from tests.conftest import ROOT
    assert main(["run", str(ROOT / "examples" / "text_chat.yaml"), "--prompt", "hi", "--prompt", "there",
                 "--max-tokens", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in lines] == ["hi", "there"]
    assert all(1 <= r["usage"]["completion_tokens"] <= 3 for r in lines)
