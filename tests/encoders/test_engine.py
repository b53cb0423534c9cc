import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, Qwen2VLForConditionalGeneration

from omnistage.encoders.cache import EncoderCache
from omnistage.encoders.engine import EncodeEngine
from omnistage.encoders.vision import VisionTower, prepare_images
from omnistage.models.tiny import ensure_tiny


@pytest.fixture(scope="module")
def vl():
    path = ensure_tiny("qwen2-vl")
    return Qwen2VLForConditionalGeneration.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)


def images(*sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy()) for h, w in sizes]


def test_items_of_different_sizes_pack_into_one_forward(vl):
    model, processor = vl
    items = prepare_images(processor, images((56, 56), (84, 140), (112, 56)))
    assert [it.tokens for it in items] == [4, 15, 8]
    tower = VisionTower(model)
    packed = tower.encode(items)
    for item, got in zip(items, packed):
        alone = tower.encode([item])[0]
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)
        with torch.inference_mode():
            ref = model.model.get_image_features(item.pixel_values, torch.tensor([item.grid_thw])).pooler_output[0]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_hash_covers_pixels_and_preprocessing(vl):
    _, processor = vl
    a, b = images((56, 56), (56, 56), seed=3)[0], images((56, 56), seed=3)[0]
    assert prepare_images(processor, [a])[0].hash == prepare_images(processor, [b])[0].hash
    c = a.copy()
    c.putpixel((0, 0), tuple((v + 1) % 256 for v in c.getpixel((0, 0))))
    assert prepare_images(processor, [c])[0].hash != prepare_images(processor, [a])[0].hash
    bigger = AutoImageProcessor.from_pretrained(ensure_tiny("qwen2-vl"), min_pixels=112 * 112)
    assert prepare_images(bigger, [a])[0].hash != prepare_images(processor, [a])[0].hash


def test_grid_is_predicted_without_preprocessing(vl):
    _, processor = vl
    for h, w in [(56, 56), (30, 200), (224, 224), (500, 90), (17, 17)]:
        item = prepare_images(processor, images((h, w)))[0]
        assert item._pixels is None
        real = processor(images=[item.image.decode()], return_tensors="pt")["image_grid_thw"][0].tolist()
        assert list(item.grid_thw) == real
        assert item.pixel_values.shape[0] == real[0] * real[1] * real[2]


def test_engine_batches_across_requests_and_skips_cached_items(vl):
    model, processor = vl
    tower = VisionTower(model)
    calls = []

    def encode(items):
        calls.append(len(items))
        return tower.encode(items)

    engine = EncodeEngine(encode, EncoderCache(1 << 30), max_items=4, patches=lambda it: it.tokens)
    pics = images((56, 56), (84, 84), (56, 112), (112, 112), (56, 84))
    items = prepare_images(processor, pics)
    engine.add("a", items[:3])
    engine.add("b", [items[3], items[0]])  # shares an image with a
    engine.add("c", items[4:])
    done = {}
    while engine.has_work():
        for rid, its, embeds in engine.step():
            done[rid] = embeds
    assert calls == [4, 1]  # a's three and b's first in one batch; the duplicate once
    torch.testing.assert_close(done["b"][1], done["a"][0])
    engine.add("again", [items[2]])
    assert engine.step()[0][0] == "again" and calls == [4, 1]  # served from the cache
    assert engine.cache.hits >= 1


def test_video_patches_follow_the_image_processor_layout(vl):
    from omnistage.encoders.video import prepare_video
    _, processor = vl
    still = images((84, 112), seed=7)[0]
    video = prepare_video(processor, [still, still])
    ref = processor(images=[still], return_tensors="pt")
    assert list(video.grid_thw) == ref["image_grid_thw"][0].tolist()
    assert torch.equal(video.pixel_values, ref["pixel_values"])  # a still video is the image itself
    clip = prepare_video(processor, images((84, 112), (84, 112), (84, 112), seed=8))
    assert clip.grid_thw == (2, 6, 8) and clip.tokens == 2 * 6 * 8 // 4
    assert clip.pixel_values.shape == (2 * 6 * 8, 3 * 2 * 14 * 14)
