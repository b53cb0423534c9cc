"""A probed AR stage: images given by reference, and the covered prefix it holds until the end."""
import base64
import hashlib
import io

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from omnistage.connectors.messages import ImageRef
from omnistage.encoders.media import open_image
from omnistage.stages.kinds.image_refs import by_reference, resolved
from omnistage.graph.options import ArOptions
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.ar import ArStage, load_model
from omnistage.stages.worker.stage import StageRequest

IMAGE = {"type": "image"}
GREEDY = {"temperature": 0, "max_tokens": 8}


def png(seed, h, w):
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def make_stage(num_blocks, media_cache_mb=0):
    path = ensure_tiny("qwen2-vl")
    options = ArOptions(num_blocks=num_blocks, max_model_len=num_blocks * 16, media_cache_mb=media_cache_mb)
    return ArStage(load_model(str(path), torch.float32, "cpu"), AutoTokenizer.from_pretrained(path), options, 8,
                   AutoImageProcessor.from_pretrained(path), encoded_upstream=True)


def run(stage, rid, inputs):
    stage.add(StageRequest(rid, inputs, GREEDY))
    tokens = []
    while stage.has_work():
        tokens += [t for out in stage.step() if out.rid == rid for t in out.ports["tokens"]]
    return tokens


def churn(stage, n):
    """Text requests long enough to take every free block in turn (evicting what is cached)."""
    for i in range(n):
        run(stage, f"churn{i}", {"prompt": f"{i} " + " ".join(f"word{i}x{j}" for j in range(40))})


def test_image_by_reference_counts_and_keys_as_its_file():
    data = png(0, 56, 84)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    files, refs = by_reference([data, url])
    assert files == [data, data] and refs[0] == refs[1] == ImageRef(refs[0].digest, 84, 56)
    (by_ref,), by_file = resolved(refs[:1]), open_image(data)
    assert by_ref.size == by_file.size
    keys = [hashlib.sha256(), hashlib.sha256()]
    by_ref.fingerprint(keys[0])
    by_file.fingerprint(keys[1])
    assert keys[0].digest() == keys[1].digest()
    with pytest.raises(RuntimeError, match="by reference"):
        by_ref.decode()
    assert by_reference([data, Image.new("RGB", (4, 4))]) is None  # not all files: the probe carries the images


def test_covered_image_by_reference_stays_cached_until_its_request_ends():
    stage = make_stage(num_blocks=24)
    content = [IMAGE, {"type": "text", "text": "What is in this picture?"}]
    data = png(1, 112, 112)
    first = run(stage, "a", {"messages": [{"role": "user", "content": content}], "images": [data]})
    inputs = {"messages": [{"role": "user", "content": content}], "images": by_reference([data])[1]}
    prepared = stage.prepare("b", inputs, GREEDY)
    assert stage.probe_prepared(prepared) == [0]
    churn(stage, 6)  # without the hold, this evicts the image's blocks and "b" would need its file
    assert run(stage, "b", inputs) == first
    blocks = stage.engine.blocks
    assert not stage.engine.pinned and blocks.num_free == len(blocks.blocks)


def test_an_aborted_probe_lets_its_blocks_go():
    stage = make_stage(num_blocks=24)
    content = [IMAGE, {"type": "text", "text": "Describe it."}]
    data = png(2, 56, 56)
    run(stage, "a", {"messages": [{"role": "user", "content": content}], "images": [data]})
    prepared = stage.prepare("b", {"messages": [{"role": "user", "content": content}], "images": [data]}, GREEDY)
    assert stage.probe_prepared(prepared) == [0]
    blocks = stage.engine.blocks
    assert blocks.num_free < len(blocks.blocks)
    stage.abort("b")
    assert not stage.engine.pinned and blocks.num_free == len(blocks.blocks)


@pytest.mark.parametrize("media_cache_mb", [0, 16])
def test_an_image_whose_embeddings_are_cached_needs_no_encoder(vl_reference, media_cache_mb):
    """The same picture with another question after it: its last KV block differs, so only the
    media cache can cover it (then no encoder, no file), and the answer is HF's."""
    stage = make_stage(num_blocks=64, media_cache_mb=media_cache_mb)
    image = Image.open(io.BytesIO(png(3, 84, 112)))
    data = png(3, 84, 112)
    first = [IMAGE, {"type": "text", "text": "What is this?"}]
    run(stage, "a", {"messages": [{"role": "user", "content": first}], "images": [data]})
    second = [IMAGE, {"type": "text", "text": "Describe the colours."}]
    inputs = {"messages": [{"role": "user", "content": second}], "images": by_reference([data])[1]}
    covered = stage.probe_prepared(stage.prepare("b", inputs, GREEDY))
    if not media_cache_mb:
        assert covered == []  # the encoder would have to send its embeddings
        return
    assert covered == [0]
    assert run(stage, "b", inputs) == vl_reference(second, [image.convert("RGB")], new=8)[0]
