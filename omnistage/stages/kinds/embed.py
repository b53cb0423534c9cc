"""The ``embed`` kind: text in, one vector per input out, batched across requests.

A request's ``input`` is a string, a list of strings, a list of token ids or a list of those;
each item is a row. A step runs up to ``max_batch`` waiting rows (of any requests) through the
model in one right-padded forward, pools each row's token states (mean, CLS or last token, as
the checkpoint says: ``checkpoints.pooling``) and normalizes them; a request is answered once
all its rows are. ``dimensions`` keeps a Matryoshka model's first d values, renormalized.
Padding changes nothing: every row's vector equals the one its input gets alone (tested).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype
from omnistage.checkpoints.pooling import Mode, Pooling, read_pooling
from omnistage.errors import RequestRejected
from omnistage.graph.options import EmbedOptions
from omnistage.graph.plan import StagePlan
from omnistage.stages.worker.stage import Stage, StageOutput, StageRequest

log = logging.getLogger("omnistage.worker")


@dataclass
class _Job:
    rows: int
    dimensions: int | None
    vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0


class EmbedStage(Stage):
    def __init__(self, model: Any, tokenizer: Any, pooling: Pooling, options: EmbedOptions, max_batch: int) -> None:
        self.model, self.tok, self.pooling, self.options = model, tokenizer, pooling, options
        self.max_batch = max_batch
        positions = getattr(model.config, "max_position_embeddings", None)
        self.max_length = options.max_input_tokens or pooling.max_length or positions
        self.matryoshka = options.matryoshka if options.matryoshka is not None else pooling.matryoshka
        self.width = int(model.config.hidden_size)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.jobs: dict[str, _Job] = {}
        self.waiting: deque[tuple[str, int, list[int]]] = deque()  # (request, row, token ids)

    def info(self) -> dict[str, Any]:
        return {"dimensions": self.width, "matryoshka": self.matryoshka}

    def add(self, request: StageRequest) -> None:
        rows = [self._ids(item, i) for i, item in enumerate(_items(request.inputs.get("input")))]
        dims = request.params.get("dimensions")
        if dims is not None and dims != self.width:
            if not self.matryoshka:
                raise RequestRejected(f"this model's embeddings have {self.width} dimensions and it is not a "
                                      "Matryoshka model: dimensions cannot shorten them", param="dimensions")
            if dims > self.width:
                raise RequestRejected(f"dimensions must be at most {self.width}", param="dimensions")
        self.jobs[request.rid] = _Job(len(rows), dims, tokens=sum(map(len, rows)))
        self.waiting.extend((request.rid, i, ids) for i, ids in enumerate(rows))

    def _ids(self, item: Any, i: int) -> list[int]:
        if isinstance(item, str):
            ids = list(self.tok(item, truncation=False)["input_ids"])
        else:
            ids = list(item)
            vocab = int(self.model.config.vocab_size)
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
        vectors = self._embed([ids for _, _, ids in batch])
        done = []
        for (rid, row, _), vector in zip(batch, vectors):
            job = self.jobs[rid]
            job.vectors[row] = vector
            if len(job.vectors) == job.rows:
                done.append(self._finish(rid, job))
        return done

    def _embed(self, rows: list[list[int]]) -> torch.Tensor:
        longest = max(map(len, rows))
        ids = torch.full((len(rows), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            states = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        vectors = pooled(states.float(), mask.to(device), self.pooling.mode)
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
        if not (isinstance(item, str) or (isinstance(item, list) and all(_is_id(t) for t in item))):
            raise RequestRejected(f"input[{i}] must be a string or a list of token ids", param="input")
    return value


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def pooled(states: torch.Tensor, mask: torch.Tensor, mode: Mode) -> torch.Tensor:
    """[rows, tokens, hidden] states and their right-padded [rows, tokens] mask -> [rows, hidden]."""
    if mode == "cls":
        return states[:, 0]
    if mode == "last":
        return states[torch.arange(states.shape[0]), mask.sum(dim=1) - 1]
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def build_embed(stage: StagePlan, device: str) -> EmbedStage:
    from transformers import AutoModel, AutoTokenizer
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    pooling = read_pooling(path)
    options = stage.options
    if options.pooling != "auto" or options.normalize is not None:
        pooling = Pooling(pooling.mode if options.pooling == "auto" else options.pooling,
                          pooling.normalize if options.normalize is None else options.normalize,
                          pooling.max_length, pooling.matryoshka, "the stage's options")
    model = AutoModel.from_pretrained(path, dtype=torch_dtype(stage.model_dtype, path, device))
    log.info("%s: %s pooling%s (%s)", stage.name, pooling.mode, ", normalized" if pooling.normalize else "",
             pooling.source)
    return EmbedStage(model.to(device).eval(), AutoTokenizer.from_pretrained(path), pooling, options,
                      stage.config.batching.max_batch)
