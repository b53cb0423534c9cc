"""/v1/embeddings through the real server with the official openai client: vectors equal
sentence-transformers', in float and base64, for strings and token ids."""
import base64

import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from omnistage.models.tiny import ensure_tiny
from tests.api.conftest import Server
from tests.conftest import ROOT

MODEL = "text-embed"
TEXTS = ["A red square on a blue field.", "Hello there", "The model reads text and images."]


@pytest.fixture(scope="module")
def embed_server():
    with Server(ROOT / "examples" / "embed.yaml") as server:
        yield server


def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_embeddings_equal_sentence_transformers(embed_server):
    want = SentenceTransformer(str(ensure_tiny("bert")), device="cpu").encode(TEXTS)
    done = client(embed_server).embeddings.create(model=MODEL, input=TEXTS)  # (the client asks for base64)
    got = np.array([d.embedding for d in sorted(done.data, key=lambda d: d.index)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(ensure_tiny("bert"))
    assert done.usage.prompt_tokens == sum(len(tok(t)["input_ids"]) for t in TEXTS) == done.usage.total_tokens
    raw = client(embed_server).with_raw_response.embeddings.create(model=MODEL, input=TEXTS[1],
                                                                    encoding_format="base64").http_response.json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, want[1], rtol=1e-5, atol=1e-5)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    by_ids = client(embed_server).embeddings.create(model=MODEL, input=ids, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in by_ids.data], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra, param", [({"input": []}, "input"), ({"input": [["x"]]}, "input"),
                                          ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
                                          ({"input": "hi", "dimensions": 8}, "dimensions"),
                                          ({"input": "hi", "temperature": 1}, "temperature")])
def test_bad_embedding_requests_are_refused_by_name(embed_server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client(embed_server).embeddings.create(model=MODEL, **extra) if "temperature" not in extra else \
            client(embed_server).embeddings.create(model=MODEL, input="hi", extra_body={"temperature": 1})
    assert err.value.body["param"] == param


def test_clip_served_by_its_directory_embeds_text_and_images_in_one_space():
    """omnistage serve DIR of a CLIP checkpoint: the openai client sends image items beside texts
    and gets CLIP's own (normalized) features; a text model refuses an image item."""
    import io

    import torch
    import torch.nn.functional as F
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel

    from omnistage.checkpoints.target import load_plan
    from tests.stages.kinds.test_embed import png
    path = str(ensure_tiny("clip"))
    model, tok, proc = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), \
        AutoImageProcessor.from_pretrained(path)
    data = png(5)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    with Server(load_plan(path)) as server:
        done = client(server).embeddings.create(model=path, input=["a photo of a cat", {"image": url}],
                                                encoding_format="float")
        with pytest.raises(openai.BadRequestError) as err:
            client(server).embeddings.create(model=path, input=[{"image": "https://example.com/cat.png"}])
        assert err.value.body["param"] == "input[0].image"
    with torch.inference_mode():
        text = model.get_text_features(**tok("a photo of a cat", return_tensors="pt")).pooler_output[0]
        pixels = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixel_values=pixels).pooler_output[0]
    want = F.normalize(torch.stack([text, image]), dim=-1).numpy()
    np.testing.assert_allclose([d.embedding for d in done.data], want, rtol=1e-5, atol=1e-5)
    assert done.usage.prompt_tokens == len(tok("a photo of a cat")["input_ids"])


def test_a_text_model_refuses_an_image_item(embed_server):
    url = "data:image/png;base64," + base64.b64encode(b"x").decode()
    with pytest.raises(openai.BadRequestError) as err:
        client(embed_server).embeddings.create(model=MODEL, input=["hi", {"image": url}])
    assert err.value.body["param"] == "input" and "embeds text only" in err.value.body["message"]
