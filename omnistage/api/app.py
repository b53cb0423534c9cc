"""The OpenAI-compatible HTTP server (Starlette). The graph starts with the app's lifespan."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from omnistage.api import audio, embeddings, images, realtime, tools, videos
from omnistage.api.convert import chat_inputs, choices_count, sampling_params, stream_settings, token_ids
from omnistage.api.errors import ApiError, from_exception
from omnistage.api.errors import handle as handle_error
from omnistage.api.guard import Guard
from omnistage.api.loading import Loader
from omnistage.api.metrics import Metrics
from omnistage.api.request import abort_on_failure, check_model, choice_params, log_admitted, read_json
from omnistage.errors import OmnistageError
from omnistage.pipeline import Pipeline
from omnistage.stages.runtime.handle import ChunkEvent, DoneEvent, ErrorEvent, RequestHandle

MAX_BODY = 64 << 20


def create_app(graph: str | Path | Any, api_key: str | None = None, max_body: int = MAX_BODY,
               media_dir: str | None = None,
               load_in_background: Callable[[BaseException], None] | None = None) -> Starlette:
    """``graph``: a graph file or a compiled ``GraphPlan``. ``media_dir``: chat media may name local
    files under this directory (else data URLs only). ``load_in_background``: answer while the
    stages load (``/health`` says "loading"); called with the error if they cannot start.
    Without it the server starts answering once every stage is ready."""
    start = Pipeline.from_yaml if isinstance(graph, (str, Path)) else Pipeline

    def ready(pipeline: Pipeline) -> None:
        app.state.pipeline = pipeline
        app.state.metrics.model = pipeline.plan.name

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if load_in_background is None:
            ready(await asyncio.to_thread(start, graph))
        else:
            app.state.loader = Loader(lambda: start(graph), ready, load_in_background)
            app.state.loader.begin()
        try:
            yield
        finally:
            if app.state.loader is not None and app.state.loader.task is not None:
                await asyncio.wait([app.state.loader.task])  # a start under way ends before closing
            if app.state.pipeline is not None:
                await asyncio.to_thread(app.state.pipeline.close)

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings.create, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/images/generations", images.generations, methods=["POST"]),
        Route("/v1/images/edits", images.edits, methods=["POST"]),
        Route("/v1/audio/speech", audio.speech, methods=["POST"]),
        Route("/v1/audio/transcriptions", audio.transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", audio.translations, methods=["POST"]),
        Route("/v1/videos", videos.create, methods=["POST"]),
        Route("/v1/videos", videos.listing, methods=["GET"]),
        Route("/v1/videos/{video_id}", videos.retrieve, methods=["GET"]),
        Route("/v1/videos/{video_id}", videos.delete, methods=["DELETE"]),
        Route("/v1/videos/{video_id}/content", videos.content, methods=["GET"]),
        WebSocketRoute("/v1/realtime", realtime.endpoint),
        Route("/health", health, methods=["GET"]),
        Route("/live", live, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], lifespan=lifespan,
        exception_handlers={HTTPException: handle_error, ApiError: handle_error, OmnistageError: handle_error})
    app.state.pipeline: Pipeline | None = None  # set once every stage is ready
    app.state.loader: Loader | None = None
    app.state.max_body = max_body
    app.state.api_key = api_key  # (the WebSocket route checks it itself: Guard sees HTTP only)
    app.state.media_dir = media_dir
    app.state.metrics = Metrics()
    app.state.videos = videos.VideoJobs()
    app.add_middleware(Guard, metrics=app.state.metrics, api_key=api_key)
    return app


def _submit(request: Request, inputs: dict[str, Any], params: dict[str, Any], n: int,
            modalities: list[str] | None) -> list[RequestHandle]:
    pipe: Pipeline = request.app.state.pipeline
    loop = asyncio.get_running_loop()
    handles = []
    for i in range(n):
        choice = choice_params(params, i)
        handles.append(pipe.submit(loop=loop, modalities=modalities, **inputs, **choice))
    log_admitted(request, handles)
    return handles


async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


async def _generate(request: Request, chat: bool) -> Response:
    body = await read_json(request)
    model = check_model(request, body)
    if chat:
        inputs = chat_inputs(body, request.app.state.media_dir)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt must be a non-empty string", "prompt")
        inputs = {"prompt": prompt}
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities)):
        raise ApiError(400, 'modalities must be a list such as ["text", "audio"]', "modalities")
    params = sampling_params(body, chat)
    if params.get("logprobs") is not None:
        modalities = sorted(set(modalities or ["text"]) | {"logprobs"})
    if token_ids(body):  # vLLM's extension: the generated ids beside the text
        modalities = sorted(set(modalities or ["text"]) | {"tokens"})
    if modalities is not None:  # a route the graph lacks is the first thing to report
        request.app.state.pipeline.plan.route_for(frozenset(inputs), frozenset(modalities))
    spoken = audio.chat_audio(body) if chat else None
    params |= spoken[0] if spoken else {}
    tooling, parser = tools.tool_request(body) if chat else None, None
    if tooling is not None:
        parser = await tools.tool_format(request) if tooling.choice != "none" else None
        tools.checked_params(tooling, params, parser)
    stream, include_usage = stream_settings(body)
    handles = _submit(request, inputs, params, choices_count(body), modalities)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    if stream:
        return await _stream(request, handles, rid, model, chat, include_usage, spoken is not None, parser)
    return await _complete(request, handles, rid, model, chat, spoken[1] if spoken else None, parser)


async def _complete(request: Request, handles: list[RequestHandle], rid: str, model: str, chat: bool,
                    audio_format: str | None = None, parser: Any = None) -> Response:
    results = await abort_on_failure(request, handles)
    choices, usage = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for i, (handle, result) in enumerate(zip(handles, results)):
        request.app.state.metrics.observe(handle, result.meta, audio.sample_rate(request))
        text = result.text or ""
        reply, called = tools.message(text, parser)
        body = {"message": reply} if chat else {"text": text}
        if audio_format is not None:  # as OpenAI: the text is the audio's transcript
            spoken = audio.message_audio(result.outputs["audio"], audio.sample_rate(request), audio_format, text)
            body["message"].update(content=None, audio=spoken)
        logprobs = result.outputs.get("logprobs")
        reason = "tool_calls" if called and result.finish_reason == "stop" else result.finish_reason
        choices.append({"index": i, **body, "finish_reason": reason,
                        "logprobs": {"content": logprobs} if logprobs is not None else None})
        if "tokens" in result.outputs:
            choices[-1]["token_ids"] = result.outputs["tokens"]
        usage["prompt_tokens"] = result.usage["prompt_tokens"]
        usage["completion_tokens"] += result.usage["completion_tokens"]
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": model, "choices": choices, "usage": usage})


async def _stream(request: Request, handles: list[RequestHandle], rid: str, model: str, chat: bool,
                  include_usage: bool, spoken: bool = False, parser: Any = None) -> Response:
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, handle: RequestHandle) -> None:
        async for event in handle.aevents():
            await queue.put((i, event))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    first = await queue.get()
    if isinstance(first[1], ErrorEvent):  # nothing sent yet: answer with a proper error status
        for t in tasks:
            t.cancel()
        for h in handles:
            request.app.state.pipeline.orchestrator.abort(h.rid)
        return from_exception(first[1].error)
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        payload = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
        if usage is not None:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    async def events() -> AsyncIterator[str]:
        pending, item = len(handles), first
        resamplers = [audio.Resampler(audio.sample_rate(request)) for _ in handles]
        audio_ids = ["audio_" + uuid.uuid4().hex for _ in handles]
        calls = [parser.stream() if parser is not None else None for _ in handles]
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        try:
            if chat:
                for i in range(len(handles)):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            while True:
                i, event = item
                if isinstance(event, ChunkEvent) and event.modality == "audio":
                    data = base64.b64encode(audio.pcm16(resamplers[i].feed(event.value))).decode()
                    yield chunk([{"index": i, "delta": {"audio": {"id": audio_ids[i], "data": data}},
                                  "finish_reason": None}])
                elif isinstance(event, ChunkEvent) and event.modality == "text" and calls[i] is not None:
                    for delta in tools.stream_deltas(calls[i], *calls[i].feed(event.value)):
                        yield chunk([{"index": i, "delta": delta, "finish_reason": None}])
                elif isinstance(event, ChunkEvent) and event.modality == "text":
                    delta = {"content": event.value} if chat else {"text": event.value}
                    if spoken:  # as OpenAI: with audio, text deltas are the audio's transcript
                        delta = {"audio": {"id": audio_ids[i], "transcript": event.value}}
                    yield chunk([{"index": i, **(({"delta": delta}) if chat else delta), "finish_reason": None}])
                elif isinstance(event, ChunkEvent) and event.modality == "tokens":
                    empty = {"delta": {"content": ""}} if chat else {"text": ""}
                    yield chunk([{"index": i, **empty, "token_ids": event.value, "finish_reason": None}])
                elif isinstance(event, ChunkEvent) and event.modality == "logprobs":
                    empty = {"delta": {"content": ""}} if chat else {"text": ""}
                    yield chunk([{"index": i, **empty, "logprobs": {"content": event.value}, "finish_reason": None}])
                elif isinstance(event, DoneEvent):
                    if spoken:  # the resampler's held-back tail
                        tail = base64.b64encode(audio.pcm16(resamplers[i].feed(torch.zeros(0), last=True))).decode()
                        last = {"id": audio_ids[i], "data": tail, "expires_at": int(time.time()) + 3600}
                        yield chunk([{"index": i, "delta": {"audio": last}, "finish_reason": None}])
                    if calls[i] is not None:
                        for delta in tools.stream_deltas(calls[i], *calls[i].finish()):
                            yield chunk([{"index": i, "delta": delta, "finish_reason": None}])
                    reasons = [m["finish_reason"] for m in event.meta.values() if "finish_reason" in m]
                    reason = reasons[-1] if reasons else "stop"
                    done = {"index": i, "finish_reason": "tool_calls" if calls[i] and calls[i].calls and reason == "stop"
                            else reason}
                    yield chunk([{**done, "delta": {}} if chat else {**done, "text": ""}])
                    request.app.state.metrics.observe(handles[i], event.meta, audio.sample_rate(request))
                    usage["prompt_tokens"] = sum(m.get("prompt_tokens", 0) for m in event.meta.values())
                    usage["completion_tokens"] += sum(m.get("completion_tokens", 0) for m in event.meta.values())
                    pending -= 1
                elif isinstance(event, ErrorEvent):
                    payload = {"error": {"message": str(event.error), "type": "server_error", "param": None,
                                         "code": None}}
                    yield f"data: {json.dumps(payload)}\n\n"
                    pending -= 1
                if pending == 0:
                    break
                item = await queue.get()
            if include_usage:
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                yield chunk([], usage)
            yield "data: [DONE]\n\n"
        finally:  # also when the client goes away: stop the requests in every stage
            for t in tasks:
                t.cancel()
            for h in handles:
                if not h.closed:
                    request.app.state.pipeline.orchestrator.abort(h.rid)

    return StreamingResponse(events(), media_type="text/event-stream")


def _loading(request: Request) -> Response | None:
    """503 while the stages load (or failed to), else None."""
    if request.app.state.pipeline is not None:
        return None
    loader = request.app.state.loader
    body = loader.status() if loader is not None else {"status": "loading"}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


def _card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "omnistage"}


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_card(request.app.state.pipeline.plan.name)]})


async def model(request: Request) -> Response:
    """``GET /v1/models/{id}`` (the openai client's ``models.retrieve``): the served model, or a 404."""
    return JSONResponse(_card(check_model(request, {"model": request.path_params["model"]})))


async def health(request: Request) -> Response:
    """Readiness: 200 when every stage has a ready replica; else 503 with the reason per stage
    (or "loading" while the server starts its stages)."""
    if (loading := _loading(request)) is not None:
        return loading
    orchestrator = request.app.state.pipeline.orchestrator
    table = orchestrator.table
    reasons = table.readiness()
    if orchestrator.broken:
        reasons["api"] = orchestrator.broken
    replicas = {r.name: r.state.value for r in table.all()}
    waiting = {stage: why for stage, why in reasons.items() if why is not None}
    body = {"status": "degraded" if waiting else "ok", "stages": {s: why or "ready" for s, why in reasons.items()},
            "replicas": replicas}
    return JSONResponse(body, status_code=503 if waiting else 200)


async def live(request: Request) -> Response:
    """Liveness: the API process answers (whatever the stages are doing)."""
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    if (loading := _loading(request)) is not None:
        return loading
    pipeline = request.app.state.pipeline
    log = pipeline.controller.scaler.log if pipeline.controller is not None else None
    plan = pipeline.plan
    groups = {stage: list(plan.stages[stage].config.resources.groups) for stage in plan.order
              if plan.stages[stage].config.resources.groups}
    request.app.state.metrics.restarted(pipeline.orchestrator.supervisor.log)
    request.app.state.metrics.api_errors.set(pipeline.orchestrator.internal_errors)
    request.app.state.metrics.slo(pipeline.orchestrator.goodput, pipeline.orchestrator.shedder.shed)
    body = request.app.state.metrics.render(pipeline.orchestrator.table.all(), log, groups)
    return Response(body, media_type="text/plain; version=0.0.4")
