"""What each stage replica placed on a GPU needs there, read from its checkpoint before any worker
starts (``graph/gpu_budget.py`` divides the cards).

- Weights: the checkpoint's tensors at the dtype the stage loads them in (safetensors headers;
  a sub-model's only; a diffusion stage's pipeline components only: text encoders, the
  transformer or UNet, the VAE, as its roles say), split over the ranks of a tensor-parallel
  replica.
- KV cache (ar, prefill, decode, talker): a fixed ``kv_cache_mb``/``num_blocks``, or, sized
  from the share, at least one sequence of ``max_model_len``.
- Activations: those stages' step peak as the engine computes it (``ModelShape``). Other
  kinds' activations are not estimated here; each replica's process is capped at its share,
  so an overrun fails there, not in a neighbour.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.shape import shape_from_config
from omnistage.checkpoints.files import read_json
from omnistage.checkpoints.weights import DTYPE_ITEMSIZE, checkpoint_directory, weight_bytes
from omnistage.graph.gpu_budget import DeviceBudget, Need, divide
from omnistage.graph.placement import gpu_device, rank_device
from omnistage.graph.plan import GraphPlan, StagePlan, diffusion_roles

log = logging.getLogger(__name__)

KV_KINDS = ("ar", "prefill", "decode", "talker")
DIFFUSION_KINDS = ("text_encode", "diffusion", "vae_decode")
# A diffusers pipeline's components by the role that loads them (their names in model_index.json).
ROLE_COMPONENTS = {"text": ("text_encoder",), "denoise": ("transformer", "unet"), "vae": ("vae",)}


def plan_needs(plan: GraphPlan) -> list[Need]:
    """A Need per replica rank the plan places on a GPU."""
    needs = []
    for name in plan.order:
        stage = plan.stages[name]
        tp = stage.config.resources.tensor_parallel if stage.kind.name in KV_KINDS else 1
        for slot in plan.placement[name]:
            for rank in range(tp):
                device = gpu_device(rank_device(slot.device, rank))
                if device is not None:
                    needs.append(stage_need(stage, slot.index, device, tp))
    return needs


def declared_share(stage: StagePlan) -> float | None:
    """The share of its GPU the stage declares (resources, else an AR stage's engine option)."""
    share = stage.config.resources.gpu_memory_utilization
    if share is None and stage.kind.name in ("ar", "prefill", "decode"):
        share = stage.options.memory_utilization
    return share


def stage_need(stage: StagePlan, replica: int, device: str, tp: int = 1) -> Need:
    weights, dtype, config = 0, "float32", {}
    if stage.model_path is not None:
        directory, dtype = _checkpoint(stage, device)
        if directory is None:
            log.warning("%s: the checkpoint %s is not on this machine; its weights are not counted",
                        stage.name, stage.model_path)
        else:
            weights = _weights(stage, directory, dtype) // tp
            config = read_json(str(directory), "config.json") or {}
            config = config.get(f"{stage.model_component}_config", config)  # (a sub-model's own)
    need = Need(stage.name, replica, device, weights, 0, declared=declared_share(stage))
    if stage.kind.name in KV_KINDS and config:
        return _with_kv(need, stage, config, dtype, tp)
    return need


def _checkpoint(stage: StagePlan, device: str) -> tuple[Path | None, str]:
    from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype  # (imports torch)
    path = checkpoint_dir(stage.model_path)
    directory = Path(path) if Path(path).is_dir() else checkpoint_directory(path)
    dtype = str(torch_dtype(stage.model_dtype, path, device)).removeprefix("torch.")
    return directory, dtype


def _weights(stage: StagePlan, directory: Path, dtype: str) -> int:
    if stage.kind.name in DIFFUSION_KINDS:
        return weight_bytes(directory, dtype, parts=_diffusion_parts(stage, directory))
    return weight_bytes(directory, dtype, prefix=stage.model_component)


def _diffusion_parts(stage: StagePlan, directory: Path) -> list[str]:
    index = read_json(str(directory), "model_index.json") or {}
    prefixes = tuple(p for role in diffusion_roles(stage) for p in ROLE_COMPONENTS[role])
    return [name for name in index if name.startswith(prefixes) and (directory / name).is_dir()]


def _with_kv(need: Need, stage: StagePlan, config: dict[str, Any], dtype: str, tp: int) -> Need:
    options = stage.options
    shape = shape_from_config(config, DTYPE_ITEMSIZE[dtype], tp)
    max_len = options.max_model_len or shape.context_len
    block_bytes = shape.block_bytes(options.block_size)
    activations = shape.activation_bytes(options.max_tokens_per_step, max_len, stage.config.batching.max_batch)
    if isinstance(options, EngineConfig) and options.num_blocks is not None:  # (a talker's have none)
        return replace(need, activations=activations, cache=options.num_blocks * block_bytes)
    if options.kv_cache_mb is not None:
        return replace(need, activations=activations, cache=options.kv_cache_mb << 20)
    return replace(need, activations=activations, kv_min=-(-max_len // options.block_size) * block_bytes)


def gpu_budgets(plan: GraphPlan, card_bytes: int | None = None) -> dict[str, DeviceBudget]:
    """The plan's GPUs divided among the replicas placed on them: this machine's cards, or, with
    ``card_bytes``, cards of that size (checking a layout on a machine without them). Raises
    GpuBudgetError. {} when nothing runs on a GPU, or on Ray (each GPU replica has a card of its
    own there)."""
    if plan.config.launcher.kind == "ray":
        return {}
    needs = plan_needs(plan)
    if not needs:
        return {}
    return divide(needs, local_gpus() if card_bytes is None else {n.device: card_bytes for n in needs})


def local_gpus() -> dict[str, int]:
    """This machine's GPUs and their memory in bytes."""
    import torch
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())}
