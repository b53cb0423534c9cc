"""What ``omnistage serve|validate TARGET`` serves: a graph file as written, or a model (a
checkpoint directory, a hub id, ``tiny:<name>``, ``packaged:<name>``) through its recipe.
Either way the result is a compiled plan whose every model was checked against its stage's kind."""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

from omnistage.checkpoints.prepare import prepare_refs
from omnistage.checkpoints.recipes import FLAG_NAMES, ServeSettings, build_graph
from omnistage.checkpoints.refs import resolve_model
from omnistage.checkpoints.support import check_model
from omnistage.errors import ConfigIssue, GraphConfigError
from omnistage.graph.compile import compile_file, compile_text
from omnistage.graph.plan import GraphPlan

# Flags that shape a graph built for a model; a graph file sets them per stage instead.
_MODEL_ONLY = {"dtype": "models.<name>.dtype", "device": "stages.<name>.resources.device",
               "max_model_len": "stages.<name>.options.max_model_len",
               "memory_utilization": "stages.<name>.options.memory_utilization",
               "kv_cache_mb": "stages.<name>.options.kv_cache_mb", "max_num_seqs": "stages.<name>.batching.max_batch",
               "chat_template": "stages.<name>.options.chat_template",
               "prefix_caching": "stages.<name>.options.prefix_caching",
               "max_tokens_per_step": "stages.<name>.options.max_tokens_per_step"}


def is_graph_file(target: str | Path) -> bool:
    return Path(target).is_file()


def graph_text(target: str, settings: ServeSettings) -> str:
    """The YAML of the graph built for the model ``target`` (a tiny or packaged model is built or
    converted first: its config is read from its directory)."""
    if Path(target).suffix in (".yaml", ".yml"):
        raise GraphConfigError([ConfigIssue("graph", f"graph file {target} not found")], target)
    try:
        resolved = resolve_model(target, Path.cwd())
        prepare_refs([resolved], hub=False)  # (a hub model's config is all a recipe reads)
        return build_graph(target, resolved, settings)
    except ValueError as exc:
        raise GraphConfigError([ConfigIssue("model", str(exc))], target) from None


def load(target: str | Path, settings: ServeSettings | None = None) -> tuple[GraphPlan, str | None]:
    """The plan for a graph file or a model, and for a model the YAML built for it."""
    settings = settings or ServeSettings()
    text = None
    if is_graph_file(target):
        _refuse_model_flags(settings)
        plan = compile_file(target, resolve_model, check_model)
    else:
        text = graph_text(str(target), settings)
        plan = compile_text(text, resolve_model, Path.cwd(), source=f"<graph for {target}>", check=check_model)
    if settings.served_model_name:
        plan = replace(plan, name=settings.served_model_name)
    return plan, text


def load_plan(target: str | Path, settings: ServeSettings | None = None) -> GraphPlan:
    return load(target, settings)[0]


def _refuse_model_flags(settings: ServeSettings) -> None:
    default = ServeSettings()
    issues = [ConfigIssue(f.name, f"{FLAG_NAMES.get(f.name, '--' + f.name.replace('_', '-'))} shapes the graph built "
                                  f"for a model; in a graph file set {_MODEL_ONLY[f.name]}")
              for f in fields(settings)
              if f.name in _MODEL_ONLY and getattr(settings, f.name) != getattr(default, f.name)]
    if issues:
        raise GraphConfigError(issues, "command line")
