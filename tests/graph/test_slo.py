"""SLO bounds: the kind's default, a stage's own, a group's override; a request meets them when
each bound holds; bad bounds are refused naming their path."""
import pytest

from omnistage.errors import GraphConfigError
from omnistage.graph.load import parse_graph
from omnistage.graph.schema import SloBounds, SloConfig, StageConfig
from omnistage.graph.slo import met, slo_of

STAGE = """
name: slo
stages:
  chat:
    kind: ar
    inputs: {prompt: request.prompt}
    outputs: {text: response.text}
    SLO
"""


def test_defaults_follow_what_the_kind_streams():
    assert slo_of(StageConfig("ar")) == SloBounds(ttft_s=2.0)
    assert slo_of(StageConfig("tts")) == SloBounds(ttfp_s=2.0)
    assert slo_of(StageConfig("diffusion")) == SloBounds(e2e_s=2.0)


def test_a_group_overrides_the_stages_bounds():
    stage = StageConfig("ar", slo=SloConfig(e2e_s=3.0, ttft_s=0.5, groups={"multimodal": SloBounds(e2e_s=6.0)}))
    assert slo_of(stage, "text") == slo_of(stage) == SloBounds(e2e_s=3.0, ttft_s=0.5)
    assert slo_of(stage, "multimodal") == SloBounds(e2e_s=6.0)


def test_a_request_meets_bounds_when_each_given_one_holds():
    both = SloBounds(e2e_s=3.0, ttft_s=0.5)
    assert met(both, e2e=2.9, ttft=0.4) and not met(both, e2e=3.1, ttft=0.4) and not met(both, e2e=1.0, ttft=0.6)
    assert not met(SloBounds(ttft_s=0.5), e2e=0.7)  # no output before the end: the end counts
    assert met(SloBounds(ttfp_s=1.0), e2e=5.0, ttft=0.1, ttfp=0.9)
    assert met(SloBounds(), e2e=100.0)


@pytest.mark.parametrize("slo, path, words", [
    ("slo: {ttft_s: 0}", "stages.chat.slo", "ttft_s must be > 0"),
    ("slo: {groups: {audio: {e2e_s: 1}}}", "stages.chat.slo", "unknown group 'audio'"),
    ("slo: {e2e: 1}", "stages.chat.slo.e2e", "e2e_s"),
])
def test_bad_bounds_are_refused_naming_the_path(slo, path, words):
    with pytest.raises(GraphConfigError) as err:
        parse_graph(STAGE.replace("SLO", slo))
    assert any(issue.path == path and words in issue.message for issue in err.value.issues), err.value.issues


def test_a_graph_reads_its_stages_slo():
    config = parse_graph(STAGE.replace("SLO", "slo: {e2e_s: 4, groups: {multimodal: {ttft_s: 1.5}}}"))
    assert slo_of(config.stages["chat"], "multimodal") == SloBounds(ttft_s=1.5)
