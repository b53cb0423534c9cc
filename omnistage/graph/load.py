"""YAML file -> validated, frozen GraphConfig (with each stage's options parsed by its kind)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from omnistage.errors import ConfigIssue, GraphConfigError
from omnistage.graph.kinds import registry
from omnistage.graph.schema import GraphConfig
from omnistage.graph.strict import Parser, frozen_dict, suggest


def read_graph(path: str | Path) -> str:
    """A graph file's text. Raises GraphConfigError when it cannot be read."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise GraphConfigError([ConfigIssue("", f"cannot read graph file: {exc.strerror}")], str(path)) from None


def parse_graph(text: str, source: str = "<string>") -> GraphConfig:
    try:
        data = yaml.safe_load(text)
        lines = source_lines(text)
    except yaml.YAMLError as exc:
        raise GraphConfigError([ConfigIssue("", f"not valid YAML: {exc}")], source) from None
    parser = Parser()
    config = parser.parse_dataclass(GraphConfig, data, "")
    if parser.issues:
        raise GraphConfigError(with_lines(parser.issues, lines), source)
    config = _parse_options(config, parser)
    if parser.issues:
        raise GraphConfigError(with_lines(parser.issues, lines), source)
    return config


def source_lines(text: str) -> dict[str, int]:
    """Each YAML path of a (valid YAML) text -> its 1-based line."""
    return _key_lines(yaml.compose(text))


def _parse_options(config: GraphConfig, parser: Parser) -> GraphConfig:
    kinds = registry()
    stages = {}
    for name, stage in config.stages.items():
        path = f"stages.{name}"
        spec = kinds.get(stage.kind)
        if spec is None:
            parser.error(f"{path}.kind", f"unknown stage kind {stage.kind!r}{suggest(stage.kind, kinds)}; "
                                         f"known kinds: {', '.join(sorted(kinds))}")
            continue
        options = parser.parse_dataclass(spec.options, dict(stage.options), f"{path}.options")
        stages[name] = dataclasses.replace(stage, options=options)
    return dataclasses.replace(config, stages=frozen_dict(stages))


def _key_lines(node: Any, path: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Map each YAML path to its 1-based line so errors can point into the file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            out[sub] = key.start_mark.line + 1
            _key_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[f"{path}[{i}]"] = item.start_mark.line + 1
            _key_lines(item, f"{path}[{i}]", out)
    return out


def with_lines(issues: list[ConfigIssue], lines: Mapping[str, int]) -> list[ConfigIssue]:
    """The issues, each prefixed with the line of its YAML path (or of the nearest enclosing key)."""
    out = []
    for issue in issues:
        probe = issue.path
        while probe and probe not in lines:
            probe = probe.rpartition(".")[0]
        where = f"line {lines[probe]}: " if probe in lines else ""
        out.append(ConfigIssue(issue.path, where + issue.message))
    return out
