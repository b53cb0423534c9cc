"""Videos as asynchronous jobs, in the shape of OpenAI's videos API.

``POST /v1/videos`` starts a job and answers at once with its id and status; ``GET
/v1/videos/{id}`` reports status and progress (from the diffusion stage's streamed steps);
``GET /v1/videos/{id}/content`` returns the MP4 once completed; ``DELETE /v1/videos/{id}``
cancels a running job in every stage and forgets it. ``GET /v1/videos`` lists jobs, newest first.

``seconds`` sets the length (frames = seconds x fps, rounded to what the model's VAE takes) and
``size`` the resolution ("WIDTHxHEIGHT"); the extensions ``num_frames``, ``fps`` and those of
the images API pass through. Finished jobs are kept up to ``MAX_JOBS`` (oldest forgotten first).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from omnistage.api.errors import ApiError
from omnistage.api.fields import VIDEOS
from omnistage.api.images import generation_params
from omnistage.api.request import check_model, log_admitted, number, read_body
from omnistage.api.usage import token_usage, usage_headers
from omnistage.stages.runtime.handle import ChunkEvent, DoneEvent, ErrorEvent, RequestHandle

MAX_JOBS = 256


@dataclass
class VideoJob:
    id: str
    model: str
    prompt: str
    handle: RequestHandle
    size: str
    seconds: str
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "queued"
    progress: int = 0
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    content: bytes | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "object": "video", "model": self.model, "status": self.status,
                "progress": self.progress, "created_at": self.created_at, "completed_at": self.completed_at,
                "expires_at": None, "prompt": self.prompt, "seconds": self.seconds, "size": self.size,
                "error": self.error, "remixed_from_video_id": None}

    async def follow(self) -> None:
        """Consume the request's events: progress chunks, then the video or an error."""
        async for event in self.handle.aevents():
            if isinstance(event, ChunkEvent) and event.modality == "progress":
                step = event.value[-1]
                self.status = "in_progress"
                self.progress = min(99, int(100 * step.step / max(1, step.steps)))
            elif isinstance(event, ChunkEvent) and event.modality == "video":
                self.content = event.value["data"]
                self.usage["video_seconds"] = round(event.value["frames"] / event.value["fps"], 3)
            elif isinstance(event, DoneEvent):
                self.status, self.progress, self.completed_at = "completed", 100, int(time.time())
                self.usage = {**token_usage(event.meta), **self.usage}
            elif isinstance(event, ErrorEvent):
                self.status, self.completed_at = "failed", int(time.time())
                self.error = {"code": "generation_failed", "message": str(event.error)}


class VideoJobs:
    def __init__(self) -> None:
        self.jobs: OrderedDict[str, VideoJob] = OrderedDict()

    def add(self, job: VideoJob) -> None:
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(job.follow())
        while len(self.jobs) > MAX_JOBS:
            oldest = next((j for j in self.jobs.values() if j.status in ("completed", "failed")), None)
            if oldest is None:
                break
            del self.jobs[oldest.id]

    def get(self, video_id: str) -> VideoJob:
        job = self.jobs.get(video_id)
        if job is None:
            raise ApiError(404, f"no video with id {video_id!r}", "video_id", "not_found")
        return job


def _frames(body: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """``seconds`` -> num_frames at the request's (or model's) fps, 1 more than a multiple of
    the VAE's temporal factor."""
    seconds = body.get("seconds")
    if seconds is None or body.get("num_frames") is not None:
        return {}
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ApiError(400, f"seconds must be a number, got {seconds!r}", "seconds") from None
    if not 0 < value <= 60:
        raise ApiError(400, "seconds must be between 0 and 60", "seconds")
    fps, t = number(body, "fps") or info.get("fps", 16), info.get("temporal_factor", 1)
    return {"num_frames": max(1, round(value * fps / t)) * t + 1}


async def create(request: Request) -> Response:
    body = await read_body(request)
    model = check_model(request, body, required=False)
    pipe = request.app.state.pipeline
    params = generation_params(body, VIDEOS)
    video_stage = next((s for s in pipe.plan.stages.values() if "video" in s.response.values()), None)
    params.update(_frames(body, pipe.orchestrator.infos.get(video_stage.name, {}) if video_stage else {}))
    handle = pipe.submit(prompt=body["prompt"], modalities=["video", "progress"] if _has_progress(pipe) else ["video"],
                         loop=asyncio.get_running_loop(), output_format="mp4", **params)
    log_admitted(request, [handle])
    resolved = handle.params
    frames, fps = resolved.get("num_frames", 0), resolved.get("fps", 1)
    job = VideoJob("video_" + uuid.uuid4().hex, model, body["prompt"], handle,
                   size=f"{resolved.get('width')}x{resolved.get('height')}", seconds=f"{frames / fps:g}")
    request.app.state.videos.add(job)
    return JSONResponse(job.view())


def _has_progress(pipe: Any) -> bool:
    return "progress" in pipe.plan.reachable_modalities(frozenset({"prompt"}))


async def retrieve(request: Request) -> Response:
    return JSONResponse(request.app.state.videos.get(request.path_params["video_id"]).view())


async def content(request: Request) -> Response:
    job = request.app.state.videos.get(request.path_params["video_id"])
    variant = request.query_params.get("variant", "video")
    if variant != "video":
        raise ApiError(400, f"variant {variant!r} is not available; only video", "variant")
    if job.status != "completed" or job.content is None:
        raise ApiError(400, f"video {job.id} is not ready (status {job.status})", "video_id", "video_not_ready")
    return Response(job.content, media_type="video/mp4", headers=usage_headers(job.usage))


async def delete(request: Request) -> Response:
    videos = request.app.state.videos
    job = videos.get(request.path_params["video_id"])
    if job.status in ("queued", "in_progress"):
        request.app.state.pipeline.orchestrator.abort(job.handle.rid)
        if job.task is not None:
            job.task.cancel()
    del videos.jobs[job.id]
    return JSONResponse({"id": job.id, "object": "video.deleted", "deleted": True})


async def listing(request: Request) -> Response:
    jobs = [j.view() for j in reversed(request.app.state.videos.jobs.values())]
    return JSONResponse({"object": "list", "data": jobs, "first_id": jobs[0]["id"] if jobs else None,
                         "last_id": jobs[-1]["id"] if jobs else None, "has_more": False})
