"""What each stage replica placed on a GPU needs there, read from its checkpoint before any worker
starts (``graph/gpu_budget.py`` divides the cards).

- Weights: the checkpoint's tensors at the dtype the stage loads them in (safetensors headers;
  a vocoder's in float32, as it loads them; a sub-model's only; a diffusion stage's pipeline
  components only: those its family loads for the stage's roles). A tensor-parallel rank holds
  1/N of each tensor its family's tensor-parallel plan splits (attention and MLP projections,
  the LM head) and all of the others (embeddings, norms).
- KV cache (ar, prefill, decode, talker): a fixed ``kv_cache_mb``/``num_blocks``, or, sized
  from the share, at least one sequence of ``max_model_len``.
- Activations: those stages' step peak as the engine computes it (``ModelShape``), and the
  memory pool of their decode steps' CUDA graphs. Other
  kinds' activations are not estimated here; each replica's process is capped at its share,
  so an overrun fails there, not in a neighbour.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from fnmatch import fnmatch
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
FLOAT32_KINDS = ("vocoder",)  # kinds that load their weights in float32 whatever the checkpoint's dtype


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
            config = read_json(str(directory), "config.json") or {}
            config = config.get(f"{stage.model_component}_config", config)  # (a sub-model's own)
            weights = _weights(stage, directory, dtype, config, tp)
    need = Need(stage.name, replica, device, weights, 0, declared=declared_share(stage), tp=tp)
    if stage.kind.name in KV_KINDS and config:
        return _with_kv(need, stage, config, dtype, tp)
    return need


def _checkpoint(stage: StagePlan, device: str) -> tuple[Path | None, str]:
    from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype  # (imports torch)
    path = checkpoint_dir(stage.model_path)
    directory = Path(path) if Path(path).is_dir() else checkpoint_directory(path)
    if stage.kind.name in FLOAT32_KINDS:
        return directory, "float32"
    dtype = torch_dtype(stage.model_dtype, path, device, half_on_gpu=stage.kind.name in DIFFUSION_KINDS)
    return directory, str(dtype).removeprefix("torch.")


def _weights(stage: StagePlan, directory: Path, dtype: str, config: dict[str, Any], tp: int) -> int:
    if stage.kind.name in DIFFUSION_KINDS:
        return weight_bytes(directory, dtype, parts=_diffusion_parts(stage, directory))
    ways = _rank_ways(config.get("model_type"), tp) if tp > 1 else None
    return weight_bytes(directory, dtype, prefix=stage.model_component, ways=ways)


def _diffusion_parts(stage: StagePlan, directory: Path) -> list[str]:
    """The pipeline components the stage's family loads for its roles (not the unused ones, such
    as Wan 2.2's second transformer, nor the safety checker)."""
    from omnistage.diffusion.registry import family_class  # (imports diffusers)
    family = family_class(str(directory))
    names = [name for role in diffusion_roles(stage) for name in family.components[role]]
    return [name for name in names if name not in family.unused and (directory / name).is_dir()]


def _rank_ways(model_type: str | None, tp: int) -> Callable[[str], int]:
    """How many ways a tensor of the model is split over ``tp`` ranks: those its family's
    tensor-parallel plan names (and the LM head) ``tp`` ways, the others not at all. A family
    without a plan is counted whole on every rank (it is refused at load)."""
    from transformers import CONFIG_MAPPING
    plan = getattr(CONFIG_MAPPING[model_type], "base_model_tp_plan", None) if model_type in CONFIG_MAPPING else None
    # (a style such as "replicated_with_grad_allreduce" keeps the tensor whole on every rank)
    split = [key for key, style in (plan or {}).items() if "colwise" in style or "rowwise" in style]
    patterns = [f"*{key}.*" for key in split] + ["*lm_head.*"] * bool(plan)

    def ways(name: str) -> int:
        return tp if any(fnmatch(name, pattern) for pattern in patterns) else 1
    return ways


def _with_kv(need: Need, stage: StagePlan, config: dict[str, Any], dtype: str, tp: int) -> Need:
    options = stage.options
    shape = shape_from_config(config, DTYPE_ITEMSIZE[dtype], tp)
    max_len = options.max_model_len or shape.context_len
    block_bytes = shape.block_bytes(options.block_size)
    max_batch = stage.config.batching.max_batch
    activations = shape.activation_bytes(options.max_tokens_per_step, max_len, max_batch)
    if tp == 1 and not getattr(options, "enforce_eager", False):  # (the decode graphs' memory pool)
        activations += shape.graph_bytes(max_batch)
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
