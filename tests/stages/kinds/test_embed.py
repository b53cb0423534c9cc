"""The embed stage in-process: batched vectors equal sentence-transformers' (the library a user
would pick) on the real all-MiniLM-L6-v2 and on a tiny BERT saved as it saves one, a decoder's
last-token vectors equal its own forward, and a CLIP's text and image vectors equal its
get_text_features / get_image_features."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from omnistage.checkpoints.packaged import ensure_packaged
from omnistage.checkpoints.pooling import Pooling, read_pooling
from omnistage.errors import RequestRejected
from omnistage.graph.options import EmbedOptions
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.embed import EmbedStage
from omnistage.stages.kinds.embed_towers import ClipTowers, TextTower
from omnistage.stages.worker.stage import StageRequest

TEXTS = ["A picture shows a red square on a blue field.", "Hello", "What is the weather like today? It is sunny.",
         "omnistage serves multimodal models as a graph of stages: encode, prefill, decode, diffusion, and more."]


def stage_for(path, max_batch=3, **options):
    pooling = read_pooling(str(path))
    return EmbedStage(TextTower(AutoModel.from_pretrained(path).eval(), pooling.mode), AutoTokenizer.from_pretrained(path),
                      pooling, EmbedOptions(**options), max_batch)


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


def png(seed, size=(40, 30)):
    import io

    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_clip_text_and_images_batched_together_equal_its_own_features():
    """Texts of three lengths and images of two sizes, mixed in requests and split across steps
    (max_batch 3), each equal to CLIPModel's own features for that input alone, normalized."""
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel
    path = ensure_tiny("clip")
    model, tok, proc = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), \
        AutoImageProcessor.from_pretrained(path)
    stage = EmbedStage(ClipTowers(model, proc), tok, Pooling("last", True, None, False, "test"), EmbedOptions(), 3)
    images = [png(1), png(2, (64, 64))]
    out = run(stage, [("a", [{"image": images[0]}, "a red square", {"text": TEXTS[2]}], {}),
                      ("b", ["Hello", {"image": images[1]}], {})])
    with torch.inference_mode():
        def text(t):
            return F.normalize(model.get_text_features(**tok(t, return_tensors="pt")).pooler_output[0], dim=-1)

        def image(data):
            pixels = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")["pixel_values"]
            return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output[0], dim=-1)
        want_a = torch.stack([image(images[0]), text("a red square"), text(TEXTS[2])])
        want_b = torch.stack([text("Hello"), image(images[1])])
    torch.testing.assert_close(out["a"].ports["embeddings"], want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["b"].ports["embeddings"], want_b, rtol=1e-5, atol=1e-5)
    assert out["a"].ports["embeddings"].shape[1] == model.config.projection_dim


def test_an_image_is_refused_by_a_text_model_and_a_bad_image_names_its_item():
    with pytest.raises(RequestRejected) as err:
        run(stage_for(ensure_tiny("bert")), [("a", ["hi", {"image": png(0)}], {})])
    assert err.value.param == "input" and "input[1] is an image" in str(err.value)
    from transformers import AutoImageProcessor, CLIPModel
    path = ensure_tiny("clip")
    stage = EmbedStage(ClipTowers(CLIPModel.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)),
                       AutoTokenizer.from_pretrained(path), Pooling("last", True, None, False, "test"), EmbedOptions(), 3)
    with pytest.raises(RequestRejected) as err:
        run(stage, [("a", ["hi", {"image": b"not an image"}], {})])
    assert err.value.param == "input[1].image"
