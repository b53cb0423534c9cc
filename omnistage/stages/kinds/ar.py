"""The ``ar`` kind: the AR engine (paged KV, continuous batching, prefix cache) as a stage.

Turns a request's messages or prompt (and images, for Qwen2-VL-family models) into token ids,
feeds the engine, and maps its outputs onto ports: ``text`` deltas, ``tokens``, ``logprobs``
and, when configured, ``hidden`` states.
"""
from __future__ import annotations

import io
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

from omnistage.ar_engine.attention import ATTN_IMPLEMENTATION
from omnistage.ar_engine.engine import EngineConfig, EngineRequest, LLMEngine, TokenOutput
from omnistage.ar_engine.kernels import backend_for
from omnistage.ar_engine.multimodal import image_spans, is_vision_language
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.errors import RequestRejected
from omnistage.graph.kinds import ArOptions
from omnistage.graph.plan import StagePlan
from omnistage.models.loading import checkpoint_dir, torch_dtype
from omnistage.stages.engine import StageOutput, StageRequest


def load_model(path: str, dtype: torch.dtype, device: str) -> Any:
    """A transformers model wired to the paged attention (causal LM or Qwen2-VL family)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
    except ValueError:
        # Vision-language: only the language model pages its KV; the vision tower keeps sdpa.
        from transformers import AutoModelForImageTextToText
        impl = {"text_config": ATTN_IMPLEMENTATION, "vision_config": "sdpa", "": ATTN_IMPLEMENTATION}
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=impl)
    return model.to(device).eval()


def engine_config(options: ArOptions, max_seqs: int) -> EngineConfig:
    return EngineConfig(block_size=options.block_size, num_blocks=options.num_blocks,
                        kv_cache_mb=options.kv_cache_mb, max_seqs=max_seqs,
                        max_tokens_per_step=options.max_tokens_per_step, chunked_prefill=options.chunked_prefill,
                        prefix_caching=options.prefix_caching, hidden_states=options.hidden_states)


class ArStage:
    def __init__(self, model: Any, tokenizer: Any, options: ArOptions, max_seqs: int,
                 image_processor: Any = None, device: str = "cpu") -> None:
        self.model = model
        self.tok = tokenizer
        self.options = options
        self.image_processor = image_processor
        self.engine = LLMEngine(model, tokenizer, engine_config(options, max_seqs), backend=backend_for(device))

    def add(self, request: StageRequest) -> None:
        sampling = SamplingParams.from_request(request.params, self.options.max_tokens)
        self.engine.add(self.engine_request(request.rid, request.inputs, sampling))

    def engine_request(self, rid: str, inputs: dict[str, Any], sampling: SamplingParams) -> EngineRequest:
        ids = self._token_ids(inputs)
        images = inputs.get("images") or []
        if not images:
            return EngineRequest(rid, ids, sampling)
        if self.image_processor is None or not is_vision_language(self.model):
            raise RequestRejected("this stage's model does not take images", param="images")
        processed = self.image_processor(images=[_to_pil(im) for im in images], return_tensors="pt")
        try:
            ids, spans, positions, delta = image_spans(self.model, ids, processed["pixel_values"],
                                                       processed["image_grid_thw"])
        except ValueError as exc:
            raise RequestRejected(str(exc), param="messages") from None
        return EngineRequest(rid, ids, sampling, spans, positions, delta)

    def _token_ids(self, inputs: dict[str, Any]) -> list[int]:
        if inputs.get("messages") is not None:
            messages = inputs["messages"]
            if not isinstance(messages, list) or not messages:
                raise RequestRejected("messages must be a non-empty list", param="messages")
            try:
                text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except (KeyError, TypeError, ValueError) as exc:
                raise RequestRejected(f"messages do not fit the model's chat template: {exc}", param="messages") from None
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str):
            raise RequestRejected("prompt must be a string", param="prompt")
        return list(self.tok(prompt)["input_ids"])

    def step(self) -> list[StageOutput]:
        return [to_stage_output(out) for out in self.engine.step()]

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()


def to_stage_output(out: TokenOutput) -> StageOutput:
    ports: dict[str, Any] = {"text": out.text, "tokens": out.tokens}
    if out.logprobs:
        ports["logprobs"] = [{"token": s.token, "logprob": s.logprob, "top": [list(t) for t in s.top]}
                             for s in out.logprobs]
    if out.hidden is not None:
        ports["hidden"] = out.hidden
    meta = {}
    if out.finished:
        meta = {"finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens, "cached_tokens": out.cached_tokens}
    return StageOutput(out.rid, ports=ports, finished=out.finished, meta=meta)


def _to_pil(image: Any) -> Any:
    from PIL import Image
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (bytes, bytearray)):
        try:
            return Image.open(io.BytesIO(image)).convert("RGB")
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise RequestRejected(f"cannot decode image: {exc}", param="images") from None
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
        return Image.fromarray(image.numpy())
    raise RequestRejected(f"cannot read an image from a {type(image).__name__}", param="images")


def build_stage(cls: type[ArStage], stage: StagePlan, device: str) -> ArStage:
    """Load the stage's checkpoint (model, tokenizer, image processor for VL) into ``cls``."""
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    model = load_model(path, torch_dtype(stage.model_dtype, device), device)
    image_processor = AutoImageProcessor.from_pretrained(path) if is_vision_language(model) else None
    return cls(model, AutoTokenizer.from_pretrained(path), stage.options, stage.config.batching.max_batch,
               image_processor, device)


def build(stage: StagePlan, device: str) -> ArStage:
    return build_stage(ArStage, stage, device)
