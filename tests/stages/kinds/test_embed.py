"""The embed stage in-process: batched vectors equal sentence-transformers' (the library a user
would pick) on the real all-MiniLM-L6-v2 and on a tiny BERT saved as it saves one, and a decoder's
last-token vectors equal its own forward."""
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from omnistage.checkpoints.packaged import ensure_packaged
from omnistage.checkpoints.pooling import read_pooling
from omnistage.errors import RequestRejected
from omnistage.graph.options import EmbedOptions
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.embed import EmbedStage
from omnistage.stages.worker.stage import StageRequest

TEXTS = ["A picture shows a red square on a blue field.", "Hello", "What is the weather like today? It is sunny.",
         "omnistage serves multimodal models as a graph of stages: encode, prefill, decode, diffusion, and more."]


def stage_for(path, max_batch=3, **options):
    return EmbedStage(AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), read_pooling(str(path)),
                      EmbedOptions(**options), max_batch)


def run(stage, requests):
    for rid, value, params in requests:
        stage.add(StageRequest(rid, {"input": value}, params))
    out = {}
    while stage.has_work():
        for o in stage.step():
            out[o.rid] = o
    return out


@pytest.mark.parametrize("path", [pytest.param(lambda: ensure_tiny("bert"), id="tiny-bert"),
                                  pytest.param(lambda: ensure_packaged("all-minilm-l6-v2"), id="all-MiniLM-L6-v2")])
def test_vectors_equal_sentence_transformers_batched_across_requests(path):
    path = path()
    stage = stage_for(path)  # max_batch 3: rows of one request split across steps, padded beside others
    out = run(stage, [("a", TEXTS[:2], {}), ("b", TEXTS[2], {}), ("c", TEXTS[1:], {})])
    want = torch.from_numpy(SentenceTransformer(str(path), device="cpu").encode(TEXTS))
    torch.testing.assert_close(out["a"].ports["embeddings"], want[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["b"].ports["embeddings"], want[2:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["c"].ports["embeddings"], want[1:], rtol=1e-5, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(path)
    assert out["b"].meta["prompt_tokens"] == len(tok(TEXTS[2])["input_ids"])


def test_a_decoder_pools_its_last_token_and_token_ids_embed_as_their_text():
    path = ensure_tiny("qwen2")
    stage = stage_for(path)
    assert stage.pooling.mode == "last" and stage.pooling.normalize
    tok = AutoTokenizer.from_pretrained(path)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    out = run(stage, [("t", TEXTS, {}), ("i", ids, {})])
    model = AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        want = torch.stack([F.normalize(model(input_ids=torch.tensor([i])).last_hidden_state[0, -1], dim=-1)
                            for i in ids])
    torch.testing.assert_close(out["t"].ports["embeddings"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["i"].ports["embeddings"], out["t"].ports["embeddings"], rtol=1e-5, atol=1e-5)


def test_dimensions_shorten_only_a_matryoshka_model():
    path = ensure_tiny("bert")
    with pytest.raises(RequestRejected) as err:
        run(stage_for(path), [("a", "hi", {"dimensions": 16})])
    assert err.value.param == "dimensions"
    full = run(stage_for(path), [("a", TEXTS, {})])["a"].ports["embeddings"]
    short = run(stage_for(path, matryoshka=True), [("a", TEXTS, {"dimensions": 16})])["a"].ports["embeddings"]
    torch.testing.assert_close(short, F.normalize(full[:, :16], dim=-1))


@pytest.mark.parametrize("value, words", [([], "input must be"), ([[1, 2], 3], "input[1]"), ("x " * 200, "at most 64"),
                                          ([[99999]], "outside this model's vocabulary"), ([""], "input[0] is empty")])
def test_bad_input_is_refused_naming_it(value, words):
    with pytest.raises(RequestRejected) as err:
        run(stage_for(ensure_tiny("bert")), [("a", value, {})])
    assert err.value.param == "input" and words in str(err.value)
