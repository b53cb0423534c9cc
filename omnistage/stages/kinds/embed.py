"""The ``embed`` kind: text (and, for CLIP, images) in, one vector per input out, batched across
requests.

A request's ``input`` is a string, a list of strings, a list of token ids, or a list of those and
of ``{"text": ...}`` / ``{"image": ...}`` items (an image as a data URL or file bytes: a CLIP model
only); each item is a row. A step runs up to ``max_batch`` waiting rows (of any requests) through
the model: text rows in one right-padded forward, image rows in another (``embed_towers``),
pools and normalizes them; a request is answered once all its rows are. ``dimensions`` keeps a
Matryoshka model's first d values, renormalized. Padding changes nothing: every row's vector
equals the one its input gets alone (tested).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from omnistage.checkpoints.files import read_json
from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype
from omnistage.checkpoints.pooling import Pooling, read_pooling
from omnistage.encoders.media import load_image
from omnistage.errors import RequestRejected
from omnistage.graph.options import EmbedOptions
from omnistage.graph.plan import StagePlan
from omnistage.stages.kinds.embed_towers import ClipTowers, TextTower
from omnistage.stages.worker.stage import Stage, StageOutput, StageRequest

log = logging.getLogger("omnistage.worker")


@dataclass
class _Job:
    rows: int
    dimensions: int | None
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0


Row = list[int] | Image.Image  # token ids, or an image


class EmbedStage(Stage):
    def __init__(self, tower: TextTower | ClipTowers, tokenizer: Any, pooling: Pooling, options: EmbedOptions,
                 max_batch: int) -> None:
        self.tower, self.tok, self.pooling, self.options = tower, tokenizer, pooling, options
        self.max_batch = max_batch
        self.max_length = options.max_input_tokens or pooling.max_length or tower.positions
        self.matryoshka = options.matryoshka if options.matryoshka is not None else pooling.matryoshka
        self.width = tower.width
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.jobs: dict[str, _Job] = {}
        self.waiting: deque[tuple[str, int, Row]] = deque()  # (request, row, token ids or image)

    def info(self) -> dict[str, Any]:
        return {"dimensions": self.width, "matryoshka": self.matryoshka}

    def add(self, request: StageRequest) -> None:
        rows = [self._row(item, i) for i, item in enumerate(_items(request.inputs.get("input")))]
        dims = request.params.get("dimensions")
        if dims is not None and dims != self.width:
            if not self.matryoshka:
                raise RequestRejected(f"this model's embeddings have {self.width} dimensions and it is not a "
                                      "Matryoshka model: dimensions cannot shorten them", param="dimensions")
            if dims > self.width:
                raise RequestRejected(f"dimensions must be at most {self.width}", param="dimensions")
        tokens = sum(len(row) for row in rows if isinstance(row, list))
        self.jobs[request.rid] = _Job(len(rows), dims, tokens=tokens)
        self.waiting.extend((request.rid, i, ids) for i, ids in enumerate(rows))

    def _row(self, item: Any, i: int) -> Row:
        if isinstance(item, dict):
            if "text" in item:
                item = item["text"]
            elif not self.tower.images:
                raise RequestRejected(f"input[{i}] is an image; this model embeds text only", param="input")
            else:
                return load_image(item["image"], param=f"input[{i}].image")
        if isinstance(item, str):
            ids = list(self.tok(item, truncation=False)["input_ids"])
        else:
            ids = list(item)
            vocab = self.tower.vocab
            if any(not 0 <= t < vocab for t in ids):
                raise RequestRejected(f"input[{i}] holds a token id outside this model's vocabulary "
                                      f"(0 to {vocab - 1})", param="input")
        if not ids:
            raise RequestRejected(f"input[{i}] is empty", param="input")
        if self.max_length is not None and len(ids) > self.max_length:
            raise RequestRejected(f"input[{i}] has {len(ids)} tokens; this model embeds at most {self.max_length}",
                                  param="input")
        return ids

    def step(self) -> list[StageOutput]:
        batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
        vectors = self._embed([row for _, _, row in batch])
        done = []
        for (rid, row, _), vector in zip(batch, vectors):
            job = self.jobs[rid]
            job.vectors[row] = vector
            if len(job.vectors) == job.rows:
                done.append(self._finish(rid, job))
        return done

    def _embed(self, rows: list[Row]) -> list[torch.Tensor]:
        """Each row's vector, in order: the text rows in one forward, the images in another."""
        texts = [i for i, row in enumerate(rows) if isinstance(row, list)]
        images = [i for i, row in enumerate(rows) if not isinstance(row, list)]
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        with torch.inference_mode():
            if texts:
                for i, vector in zip(texts, self._texts([rows[i] for i in texts])):
                    out[i] = vector
            if images:
                assert isinstance(self.tower, ClipTowers)
                for i, vector in zip(images, self._normalized(self.tower.image([rows[i] for i in images]))):
                    out[i] = vector
        return out

    def _texts(self, rows: list[list[int]]) -> torch.Tensor:
        longest = max(map(len, rows))
        ids = torch.full((len(rows), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        device = self.tower.model.device
        return self._normalized(self.tower.text(ids.to(device), mask.to(device)))

    def _normalized(self, vectors: torch.Tensor) -> torch.Tensor:
        return (F.normalize(vectors, dim=-1) if self.pooling.normalize else vectors).cpu()

    def _finish(self, rid: str, job: _Job) -> StageOutput:
        del self.jobs[rid]
        vectors = torch.stack([job.vectors[i] for i in range(job.rows)])
        if job.dimensions is not None and job.dimensions != self.width:
            vectors = vectors[:, :job.dimensions]
            vectors = F.normalize(vectors, dim=-1) if self.pooling.normalize else vectors
        return StageOutput(rid, ports={"embeddings": vectors}, finished=True,
                           meta={"prompt_tokens": job.tokens, "completion_tokens": 0})

    def abort(self, rid: str) -> None:
        self.jobs.pop(rid, None)
        self.waiting = deque(row for row in self.waiting if row[0] != rid)

    def has_work(self) -> bool:
        return bool(self.waiting)

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self.waiting)), "running": float(len(self.jobs))}


def _items(value: Any) -> list[Any]:
    """A request's ``input`` as rows: strings or token-id lists (checked)."""
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(_is_id(t) for t in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RequestRejected("input must be a string, a list of strings, a list of token ids or a list of those",
                              param="input")
    for i, item in enumerate(value):
        if isinstance(item, dict):
            if len(item) != 1 or not (isinstance(item.get("text"), str) or "image" in item):
                raise RequestRejected(f"input[{i}] must be {{\"text\": a string}} or {{\"image\": a data URL}}",
                                      param="input")
        elif not (isinstance(item, str) or (isinstance(item, list) and all(_is_id(t) for t in item))):
            raise RequestRejected(f"input[{i}] must be a string or a list of token ids", param="input")
    return value


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_embed(stage: StagePlan, device: str) -> EmbedStage:
    from transformers import AutoModel, AutoTokenizer
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    options = stage.options
    model = AutoModel.from_pretrained(path, dtype=torch_dtype(stage.model_dtype, path, device)).to(device).eval()
    if (read_json(path, "config.json") or {}).get("model_type") == "clip":
        return _clip_stage(stage, model, path)
    pooling = read_pooling(path)
    if options.pooling != "auto" or options.normalize is not None:
        pooling = Pooling(pooling.mode if options.pooling == "auto" else options.pooling,
                          pooling.normalize if options.normalize is None else options.normalize,
                          pooling.max_length, pooling.matryoshka, "the stage's options")
    log.info("%s: %s pooling%s (%s)", stage.name, pooling.mode, ", normalized" if pooling.normalize else "",
             pooling.source)
    return EmbedStage(TextTower(model, pooling.mode), AutoTokenizer.from_pretrained(path), pooling, options,
                      stage.config.batching.max_batch)


def _clip_stage(stage: StagePlan, model: Any, path: str) -> EmbedStage:
    """CLIP pools with its own projections; its vectors are compared by cosine, so normalized
    unless the stage's ``normalize`` says otherwise."""
    from transformers import AutoImageProcessor, AutoTokenizer
    options = stage.options
    if options.pooling != "auto":
        raise ValueError(f"stage {stage.name}: a CLIP model pools with its own projection; pooling must be auto, "
                         f"not {options.pooling}")
    normalize = True if options.normalize is None else options.normalize
    pooling = Pooling("last", normalize, None, False, "CLIP's projections")
    towers = ClipTowers(model, AutoImageProcessor.from_pretrained(path))
    log.info("%s: CLIP text and image towers%s", stage.name, ", normalized" if normalize else "")
    return EmbedStage(towers, AutoTokenizer.from_pretrained(path), pooling, options, stage.config.batching.max_batch)
