"""omnistage bench: its arithmetic on known outcomes, and a real run against the default graph."""
import json

import pytest

from omnistage.bench.client import Outcome
from omnistage.bench.run import summarize, table
from omnistage.cli import main
from tests.api.conftest import default_server  # noqa: F401 - the fixture


def test_summary_percentiles_goodput_and_tpot():
    outcomes = [Outcome(ok=True, ttft=t, itl=[0.01, 0.03], e2e=t + 0.04, output_tokens=3, prompt_tokens=5)
                for t in (0.1, 0.2, 0.3, 0.4)] + [Outcome(error="503: busy")]
    result = summarize(outcomes, duration=2.0, percentiles=[50, 99], goodput={"ttft": 250})
    assert (result["completed"], result["failed"]) == (4, 1)
    assert result["mean_ttft_ms"] == pytest.approx(250) and result["median_ttft_ms"] == pytest.approx(250)
    assert result["p99_ttft_ms"] == pytest.approx(397)  # linear between the two highest
    assert result["mean_itl_ms"] == pytest.approx(20) and result["mean_tpot_ms"] == pytest.approx(20)
    assert result["request_goodput"] == pytest.approx(1.0)  # 2 of 4 within 250 ms, over 2 s
    assert result["output_throughput"] == pytest.approx(6.0) and result["errors"] == ["503: busy"]
    assert "p99_ttft_ms" in table(result, "chat") and "error: 503: busy" in table(result, "chat")


@pytest.mark.parametrize("endpoint, extra, metrics", [
    ("chat", ["--input-len", "16", "--output-len", "8", "--max-concurrency", "4"], ["ttft", "itl", "tpot", "e2el"]),
    ("chat", ["--image-size", "64x48", "--output-len", "4", "--request-rate", "20"], ["ttft", "e2el"]),
    ("images", [], ["e2el"]),
    ("speech", [], ["ttfp", "rtf", "e2el"]),
    ("spoken-chat", ["--output-len", "8"], ["ttft", "ttfp", "e2el"]),
    ("videos", ["--num-prompts", "2"], ["e2el"]),
])
def test_bench_drives_every_endpoint_of_the_default_graph(default_server, tmp_path, capsys,  # noqa: F811
                                                          endpoint, extra, metrics):
    out = tmp_path / "result.json"
    args = ["bench", "--base-url", default_server.url, "--endpoint", endpoint, "--num-prompts", "6",
            "--save-result", str(out), "--goodput", "e2el:60000", *extra]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["failed"] == 0 and result["completed"] == (2 if endpoint == "videos" else 6), result["errors"]
    for name in metrics:
        unit = "" if name == "rtf" else "_ms"
        assert result[f"p99_{name}{unit}"] > 0, name
    # (within the SLO or not depends on the machine's load: the arithmetic is tested above)
    assert 0 <= result["request_goodput"] <= result["request_throughput"] + 1e-9
    printed = capsys.readouterr().out
    assert f" omnistage bench: {endpoint} " in printed and "request_throughput" in printed
