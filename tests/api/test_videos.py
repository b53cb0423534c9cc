"""Video jobs: the openai client's videos API and raw httpx."""
import io
import time

import av
import httpx
import openai
import pytest

MODEL = "omnistage-tiny"


def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as container:
        return len(list(container.decode(video=0)))


def test_create_poll_download_with_the_openai_client(default_server):
    c = client(default_server)
    job = c.videos.create(model=MODEL, prompt="a dog running", extra_body={"num_inference_steps": 3, "seed": 2})
    assert job.status in ("queued", "in_progress", "completed") and job.id.startswith("video_")
    assert job.size == "32x32" and job.object == "video"
    done = c.videos.poll(job.id, poll_interval_ms=50)
    assert done.status == "completed" and done.progress == 100 and done.completed_at
    mp4 = c.videos.download_content(job.id).content
    assert mp4[4:8] == b"ftyp" and frames(mp4) == 9
    assert job.id in [v["id"] for v in httpx.get(f"{default_server.url}/v1/videos").json()["data"]]


def test_seconds_and_size_set_frames_and_resolution(default_server):
    r = httpx.post(f"{default_server.url}/v1/videos", json={
        "prompt": "waves", "seconds": "2", "size": "48x32", "num_inference_steps": 2})
    job = r.json()
    assert r.status_code == 200 and job["size"] == "48x32" and job["seconds"] == "2.125"  # 17 frames at 8 fps
    deadline = time.time() + 60
    while job["status"] not in ("completed", "failed") and time.time() < deadline:
        time.sleep(0.05)
        job = httpx.get(f"{default_server.url}/v1/videos/{job['id']}").json()
    assert job["status"] == "completed"
    content = httpx.get(f"{default_server.url}/v1/videos/{job['id']}/content")
    assert frames(content.content) == 17 and content.headers["x-usage-video-seconds"] == "2.125"


def test_progress_is_reported_and_delete_cancels(default_server):
    url = f"{default_server.url}/v1/videos"
    job = httpx.post(url, json={"prompt": "slow", "num_inference_steps": 200, "seed": 1}).json()
    seen = set()
    for _ in range(200):
        view = httpx.get(f"{url}/{job['id']}").json()
        seen.add(view["progress"])
        if view["progress"] > 0:
            break
        time.sleep(0.02)
    assert max(seen) > 0 and view["status"] == "in_progress"
    early = httpx.get(f"{url}/{job['id']}/content")
    assert early.status_code == 400 and early.json()["error"]["code"] == "video_not_ready"
    gone = httpx.delete(f"{url}/{job['id']}").json()
    assert gone == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert httpx.get(f"{url}/{job['id']}").status_code == 404


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "size": "30x32"}, "width"), ({"prompt": "x", "seconds": "soon"}, "seconds"),
    ({"prompt": "x", "num_frames": 8}, "num_frames"), ({}, "prompt"),
    ({"prompt": "x", "num_frame": 9}, "num_frame"), ({"prompt": "x", "fps": 0}, "fps"),
    ({"prompt": "x", "guidance_scale": 500}, "guidance_scale"), ({"prompt": "x", "input_reference": "img"}, "input_reference"),
])
def test_bad_video_requests(default_server, body, param):
    r = httpx.post(f"{default_server.url}/v1/videos", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_unknown_video_is_404(default_server):
    r = httpx.get(f"{default_server.url}/v1/videos/video_nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
