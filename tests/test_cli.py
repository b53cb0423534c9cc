from omnistage.cli import main


def test_demo_serves_image_chat_and_reuses_the_cache(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "stages: vision -> prefill -> decode" in out  # first sight of the image: encoded
    assert "stages: prefill -> decode; 24 tokens, 32 prompt tokens from the prefix cache" in out  # repeat
    assert sum(line.startswith("> ") for line in out.splitlines()) == 3


def test_run_prints_one_json_line_per_prompt(capsys):
    import json

    from tests.conftest import ROOT
    assert main(["run", str(ROOT / "examples" / "text_chat.yaml"), "--prompt", "hi", "--prompt", "there",
                 "--max-tokens", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in lines] == ["hi", "there"]
    assert all(1 <= r["usage"]["completion_tokens"] <= 3 for r in lines)
