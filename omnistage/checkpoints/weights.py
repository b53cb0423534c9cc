"""How many bytes a checkpoint's weights take once loaded in a dtype, read from the safetensors
headers (shapes and dtypes; no tensor is read, torch is not imported).

Floating tensors count at the dtype the stage loads them in, the others (int buffers) as
stored. A weight file in another format (``.bin``) counts at its size on disk. Used by the GPU
memory budget (``graph/gpu_budget.py``) before any worker starts.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

from omnistage.checkpoints.files import SKIPPED, local_dir, local_snapshot

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
            "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOATING = {"F64", "F32", "F16", "BF16"}
DTYPE_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def checkpoint_directory(ref: str) -> Path | None:
    """Where a resolved reference's files are without a download (None: a hub id not cached)."""
    return local_dir(ref) or local_snapshot(ref)


def weight_bytes(directory: Path, dtype: str, prefix: str | None = None, parts: Iterable[str] | None = None,
                 ways: Callable[[str], int] | None = None) -> int:
    """Bytes of the weights in ``directory`` loaded as ``dtype`` ("float32", "bfloat16", ...):
    only tensors named ``<prefix>.*`` when given (a sub-model), only the subdirectories
    ``parts`` when given (components of a diffusers pipeline); a tensor counts 1/``ways(name)``
    of itself when given (a tensor-parallel rank's shard)."""
    roots = [directory / part for part in parts] if parts is not None else [directory]
    return sum(_file_bytes(f, DTYPE_ITEMSIZE[dtype], prefix, ways or _whole)
               for root in roots for f in _weight_files(root))


def _whole(name: str) -> int:
    return 1


def _weight_files(root: Path) -> list[Path]:
    skipped = [pattern.replace("*", "") for pattern in SKIPPED if pattern.startswith("*.") and pattern.count("*") == 2]
    safetensors = [f for f in sorted(root.glob("*.safetensors")) if not any(s in f.name for s in skipped)]
    return safetensors or sorted(root.glob("*.bin"))


def _file_bytes(path: Path, itemsize: int, prefix: str | None, ways: Callable[[str], int]) -> int:
    if path.suffix != ".safetensors":
        return path.stat().st_size
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or (prefix is not None and not name.startswith(f"{prefix}.")):
            continue
        count = 1
        for dim in entry["shape"]:
            count *= dim
        stored = ITEMSIZE.get(entry["dtype"], 4)  # (a dtype not listed: 4 bytes, an over-estimate)
        total += -(-count * (itemsize if entry["dtype"] in FLOATING else stored) // ways(name))
    return total
