"""``omnistage serve DIR`` with no YAML, for a tiny checkpoint of every supported architecture,
driven through the official openai client."""
import io
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from omnistage.checkpoints.target import load_plan
from omnistage.models.tiny import ensure_tiny
from tests.api.conftest import Server


def client(server, model):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0), model


def served(name):
    path = str(ensure_tiny(name))
    return Server(load_plan(path)), path


def test_a_causal_lm_answers_with_the_ids_hf_generate_picks(hf_greedy, qwen2_dir):
    with Server(load_plan(str(qwen2_dir))) as server:
        c, model = client(server, str(qwen2_dir))
        messages = [{"role": "user", "content": "Tell me a story"}]
        out = c.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0,
                                        extra_body={"return_token_ids": True})
        ids, text = hf_greedy(messages=messages, max_tokens=12)
        assert out.choices[0].model_extra["token_ids"] == ids and out.choices[0].message.content == text
        assert c.models.list().data[0].id == model
        # No max_tokens: the rest of the context (the tiny model stops at its end token or there).
        free = c.completions.create(model=model, prompt="Tell me", temperature=0, max_tokens=None)
        assert free.choices[0].finish_reason in ("stop", "length") and free.usage.completion_tokens > 0


@pytest.mark.parametrize("name", ["qwen3", "qwen3-moe", "gemma3"])
def test_newer_text_families_serve_the_ids_hf_generate_picks(name):
    """``omnistage serve DIR`` on each: the recipe, the worker and the HTTP path, against HF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    server, path = served(name)
    messages = [{"role": "user", "content": "Tell me a story"}]
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    ids = out[0, prompt["input_ids"].shape[1]:].tolist()
    with server:
        c, model_id = client(server, path)
        got = c.chat.completions.create(model=model_id, messages=messages, max_tokens=8, temperature=0,
                                        extra_body={"return_token_ids": True})
    assert got.choices[0].model_extra["token_ids"] == ids


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl"])
def test_a_vision_language_model_takes_an_image(name):
    from tests.api.test_faults import _png
    server, path = served(name)
    with server:
        c, model = client(server, path)
        out = c.chat.completions.create(model=model, max_tokens=4, temperature=0, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _png()}}, {"type": "text", "text": "what?"}]}])
        assert out.usage.prompt_tokens > 10 and out.usage.completion_tokens == 4


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "flux", "qwen-image"])
def test_image_pipelines_generate(name):
    server, path = served(name)
    with server:
        c, model = client(server, path)
        out = c.images.generate(model=model, prompt="a red cube", size="32x32", response_format="b64_json",
                                extra_body={"num_inference_steps": 2})
        assert out.data[0].b64_json
        if name == "flux":  # guidance is an input of the model: there is no negative prompt to honour
            with pytest.raises(openai.BadRequestError, match="negative_prompt"):
                c.images.generate(model=model, prompt="a red cube", size="32x32",
                                  extra_body={"num_inference_steps": 2, "negative_prompt": "blurry"})
        if name == "qwen-image":  # text_encode -> diffusion -> vae_decode, true CFG: the pipeline's image
            guided = c.images.generate(model=model, prompt="a red cube", size="32x32", response_format="b64_json",
                                       extra_body={"num_inference_steps": 3, "negative_prompt": "blurry", "seed": 7})
    if name == "qwen-image":
        import base64

        import torch
        from diffusers import QwenImagePipeline
        from PIL import Image
        pipe = QwenImagePipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        ref = pipe("a red cube", negative_prompt="blurry", height=32, width=32, num_inference_steps=3,
                   generator=torch.Generator().manual_seed(7), output_type="np").images[0]
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(guided.data[0].b64_json))).convert("RGB")).astype(int)
        assert np.abs(got - np.round(ref * 255)).max() <= 1


def test_wan_generates_a_video():
    server, path = served("wan")
    with server:
        r = httpx.post(f"{server.url}/v1/videos", json={"model": path, "prompt": "waves", "size": "32x32",
                                                         "seconds": "1", "num_inference_steps": 2}, timeout=60)
        assert r.status_code == 200, r.text
        deadline = time.time() + 120
        while (job := httpx.get(f"{server.url}/v1/videos/{r.json()['id']}").json())["status"] not in (
                "completed", "failed") and time.time() < deadline:
            time.sleep(0.1)
        assert job["status"] == "completed", job


def test_speech_models_speak_and_transcribe():
    for name in ("speecht5", "whisper"):
        server, path = served(name)
        with server:
            c, model = client(server, path)
            if name == "speecht5":
                wav = c.audio.speech.create(model=model, input="hello there", voice="alloy", response_format="wav")
                assert len(sf.read(io.BytesIO(wav.content))[0]) > 0
            else:
                buf = io.BytesIO()
                sf.write(buf, (np.sin(np.arange(16000) * 0.17) * 0.3).astype(np.float32), 16000, format="WAV")
                assert isinstance(c.audio.transcriptions.create(model=model, file=("a.wav", buf.getvalue())).text, str)


def test_qwen2_5_omni_answers_in_text_and_voice():
    server, path = served("qwen2.5-omni")
    with server:
        c, model = client(server, path)
        out = c.chat.completions.create(model=model, max_tokens=6, messages=[{"role": "user", "content": "hi"}],
                                        modalities=["text", "audio"], audio={"voice": "Chelsie", "format": "wav"})
        assert out.choices[0].message.audio.data and out.choices[0].message.audio.transcript is not None


def test_the_cli_serves_a_hub_id_from_the_hub_cache_offline(tmp_path, qwen2_dir):
    from tests.checkpoints.test_recipes import prefill_hub_cache
    prefill_hub_cache(tmp_path / "hf", "tinyorg/tiny-qwen2", qwen2_dir)
    port = _free_port()
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    server = subprocess.Popen([sys.executable, "-m", "omnistage.cli", "serve", "tinyorg/tiny-qwen2", "--port", str(port),
                               "--served-model-name", "tiny", "--max-model-len", "512"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        # (ignore_eos: the sampled answer of random weights may end early)
        out = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 3
    finally:
        server.terminate()
        log, _ = server.communicate(timeout=60)
    assert "KV cache" in log and "max_model_len 512" in log, log


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inpaint_mask(size: int):
    """An RGBA mask as OpenAI's API takes it (transparent where the picture is edited), and the
    same mask as diffusers takes it (white where repainted)."""
    from PIL import Image, ImageDraw
    rgba = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    ImageDraw.Draw(rgba).rectangle((8, 4, 23, 19), fill=(0, 0, 0, 0))
    white = Image.new("L", (size, size), 0)
    ImageDraw.Draw(white).rectangle((8, 4, 23, 19), fill=255)
    return rgba, white


def test_an_image_edit_restyles_the_upload_as_the_img2img_pipeline_does():
    """``images.edit`` of the openai client against ``serve`` of a Stable Diffusion checkpoint:
    the PNG that comes back is StableDiffusionImg2ImgPipeline's image for the same request, and
    with a mask StableDiffusionInpaintPipeline's; a mask of another size or not an image is a 400."""
    import base64

    import torch
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    picture = Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy())
    upload = io.BytesIO()
    picture.save(upload, format="PNG")
    server, path = served("sd")
    settings = {"num_inference_steps": 4, "strength": 0.5, "seed": 3, "guidance_scale": 7.5}
    with server:
        c, model = client(server, path)
        out = c.images.edit(model=model, image=("in.png", upload.getvalue(), "image/png"), prompt="a red cube",
                            size="32x32", response_format="b64_json", extra_body=settings)
        rgba, white = _inpaint_mask(32)
        mask = io.BytesIO()
        rgba.save(mask, format="PNG")
        inpainted = c.images.edit(model=model, image=("in.png", upload.getvalue(), "image/png"), prompt="a red cube",
                                  mask=("m.png", mask.getvalue(), "image/png"), size="32x32",
                                  extra_body={"num_inference_steps": 4, "seed": 5, "guidance_scale": 7.5})
        small = io.BytesIO()
        rgba.resize((16, 16)).save(small, format="PNG")
        for bad, why in ((small.getvalue(), "same size"), (b"not a picture", "decode")):
            with pytest.raises(openai.BadRequestError, match=why) as info:
                c.images.edit(model=model, image=("in.png", upload.getvalue(), "image/png"), prompt="a red cube",
                              mask=("m.png", bad, "image/png"))
            assert info.value.body["param"] == "mask"
        with pytest.raises(openai.BadRequestError, match="decode") as info:
            c.images.edit(model=model, image=("in.png", b"GIF89a broken", "image/gif"), prompt="a red cube")
        assert info.value.body["param"] == "image"
        with pytest.raises(openai.BadRequestError, match="strength"):
            c.images.generate(model=model, prompt="a red cube", size="32x32", extra_body={"strength": 0.5})
        files = [("image[]", ("a.png", upload.getvalue(), "image/png")), ("image[]", ("b.png", upload.getvalue(), "image/png"))]
        two = httpx.post(f"{server.url}/v1/images/edits", data={"prompt": "x"}, files=files, timeout=60)
        assert two.status_code == 400 and two.json()["error"]["param"] == "image", two.text
        quiet = httpx.post(f"{server.url}/v1/images/edits", timeout=60, files=[files[0]],
                           data={"prompt": "x", "stream": "false", "size": "32x32", "num_inference_steps": "2"})
        assert quiet.status_code == 200, quiet.text
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))).convert("RGB")).astype(int)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a red cube", image=picture, strength=0.5, num_inference_steps=4, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert got.shape == (32, 32, 3)
    assert np.abs(got - np.round(ref * 255)).max() <= 1
    from diffusers import StableDiffusionInpaintPipeline
    inpaint = StableDiffusionInpaintPipeline.from_pretrained(path)
    inpaint.set_progress_bar_config(disable=True)
    ref = inpaint("a red cube", image=picture, mask_image=white, num_inference_steps=4, guidance_scale=7.5,
                  height=32, width=32, generator=torch.Generator().manual_seed(5), output_type="np").images[0]
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(inpainted.data[0].b64_json))).convert("RGB")).astype(int)
    assert np.abs(got - np.round(ref * 255)).max() <= 1
