import pytest

from omnistage.diffusion.params import as_request_params, check_params, check_prompt, parse_params
from omnistage.errors import RequestRejected

IMAGE = {"output": "image", "size_multiple": 8, "height": 64, "width": 64, "steps": 20, "guidance": 7.5,
         "schedulers": ["ddim", "euler"], "max_pixels": 512 * 512, "max_steps": 200, "max_frames": 129}
VIDEO = {**IMAGE, "output": "video", "size_multiple": 16, "temporal_factor": 4, "num_frames": 9}


def test_defaults_come_from_the_model_info():
    p = parse_params(IMAGE, {})
    assert (p.height, p.width, p.steps, p.guidance, p.scheduler, p.output_format) == (64, 64, 20, 7.5, "default", "png")
    assert p.cfg and p.num_frames is None and 0 <= p.seed


@pytest.mark.parametrize("params, param, words", [
    ({"height": 60}, "height", "multiple of 8"),
    ({"width": 0}, "width", "positive multiple"),
    ({"height": 1024, "width": 1024}, "size", "at most"),
    ({"num_inference_steps": 0}, "num_inference_steps", "between 1 and 200"),
    ({"num_inference_steps": 10000}, "num_inference_steps", "between 1 and 200"),
    ({"num_inference_steps": 2.5}, "num_inference_steps", "integer"),
    ({"guidance_scale": -1}, "guidance_scale", "between 0 and 100"),
    ({"guidance_scale": "high"}, "guidance_scale", "number"),
    ({"scheduler": "lms"}, "scheduler", "unknown scheduler 'lms'"),
    ({"output_format": "bmp"}, "output_format", "png, jpeg, webp, raw"),
    ({"num_frames": 9}, "num_frames", "generates images"),
    ({"seed": -3}, "seed", "integer >= 0"),
    ({"negative_prompt": 5}, "negative_prompt", "string"),
])
def test_bad_parameters_are_rejected_with_the_parameter_named(params, param, words):
    with pytest.raises(RequestRejected) as err:
        parse_params(IMAGE, params)
    assert err.value.param == param and words in str(err.value) and err.value.status == 400


@pytest.mark.parametrize("frames, ok", [(9, True), (1, True), (13, True), (8, False), (10, False), (133, False)])
def test_video_frames_must_fit_the_temporal_factor(frames, ok):
    if ok:
        assert parse_params(VIDEO, {"num_frames": frames}).num_frames == frames
    else:
        with pytest.raises(RequestRejected, match="num_frames"):
            parse_params(VIDEO, {"num_frames": frames})


def test_video_formats():
    assert parse_params(VIDEO, {}).output_format == "mp4"
    assert parse_params(VIDEO, {"output_format": "gif"}).output_format == "gif"
    with pytest.raises(RequestRejected, match="mp4, gif, webp, raw"):
        parse_params(VIDEO, {"output_format": "png"})


def test_check_params_resolves_once_so_stages_agree():
    resolved = check_params(None, IMAGE, {"num_inference_steps": 3})
    assert resolved["num_inference_steps"] == 3 and isinstance(resolved["seed"], int)
    again = parse_params(IMAGE, resolved)
    assert as_request_params(again) == resolved  # a drawn seed stays the same downstream


@pytest.mark.parametrize("prompt", ["", "   ", None, 3, "x" * 9000])
def test_bad_prompts(prompt):
    with pytest.raises(RequestRejected) as err:
        check_prompt(prompt)
    assert err.value.param == "prompt"
