"""How an embedding checkpoint turns token states into one vector, read from its files alone.

A sentence-transformers checkpoint says it: ``modules.json`` lists a ``Pooling`` module (its
``config.json`` names the mode: mean, CLS or last token) and whether a ``Normalize`` module
follows; ``sentence_bert_config.json`` gives the longest input (``max_seq_length``). Without
them, as vLLM does: an encoder (BERT-style) pools its CLS token, a decoder its last token, and
both normalize. ``config.json``'s ``is_matryoshka`` / ``matryoshka_dimensions`` say whether a
shorter ``dimensions`` may be asked for (the vector's first d values, renormalized).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from omnistage.checkpoints.files import read_json

Mode = Literal["mean", "cls", "last"]
ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta-v2", "nomic_bert"})
_ST_MODES: dict[str, Mode] = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                              "pooling_mode_lasttoken": "last"}


@dataclass(frozen=True)
class Pooling:
    mode: Mode
    normalize: bool
    max_length: int | None  # the longest input in tokens (None: the model's positions)
    matryoshka: bool  # a shorter ``dimensions`` is meaningful
    source: str  # where these came from (logged)


def read_pooling(ref: str) -> Pooling:
    """The checkpoint's pooling; raises ValueError for a mode omnistage does not implement."""
    config = read_json(ref, "config.json") or {}
    matryoshka = bool(config.get("is_matryoshka") or config.get("matryoshka_dimensions"))
    encoder = config.get("model_type") in ENCODERS
    limit = config.get("max_position_embeddings")
    modules = read_json(ref, "modules.json")
    bert = read_json(ref, "sentence_bert_config.json") or {}
    limit = bert.get("max_seq_length") or limit
    if isinstance(modules, list):
        kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
        if "Pooling" in kinds:
            pool = read_json(ref, f"{kinds['Pooling'].get('path', '1_Pooling')}/config.json") or {}
            on = [mode for key, mode in _ST_MODES.items() if pool.get(key)]
            other = [k for k, v in pool.items() if k.startswith("pooling_mode") and v and k not in _ST_MODES]
            if other or len(on) != 1:
                raise ValueError(f"{ref}: sentence-transformers pooling {', '.join(other + on) or 'none'} is not "
                                 "implemented (one of mean, CLS, last token is)")
            return Pooling(on[0], "Normalize" in kinds, limit, matryoshka, "sentence-transformers config")
    return Pooling("cls" if encoder else "last", True, limit, matryoshka, "default for its architecture")

