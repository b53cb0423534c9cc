"""The CPU attention backend: ``paged_attention_cpu.cpp``, compiled once per machine.

Every query row of a step (decode rows and prefill tokens alike) reads its keys and values in
place from the paged cache, so a step's attention is one call per layer with no padded copy of
the cache. The extension is built with the machine's compiler on first use (about a minute) into
``$OMNISTAGE_CACHE/kernels/<source, torch and CPU hash>/`` and loaded from there afterwards;
``OMNISTAGE_CPU_KERNELS=0`` turns it off (the torch reference in ``attention.py`` runs instead).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from omnistage.ar_engine.attention import store_kv

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("paged_attention_cpu.cpp")
NAME = "omnistage_paged_attention_cpu"
# Built where it runs (the build folder's name carries the CPU's flags). OpenMP: at::parallel_for
# is inline and runs on one thread without it; the runtime is the libgomp torch already loaded.
FLAGS = ["-O3", "-march=native", "-fopenmp"]


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")


def build_dir() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + _cpu_flags().encode()
                            + " ".join(FLAGS).encode()).hexdigest()[:16]
    # (the cache root as every omnistage cache reads it; engines import nothing of the layers above)
    base = os.environ.get("OMNISTAGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omnistage")
    return Path(base) / "kernels" / f"paged_attention_cpu-{digest}"


@lru_cache(maxsize=1)
def extension() -> Any:
    """The compiled module, or None (switched off, or it cannot be built here: logged once)."""
    if os.environ.get("OMNISTAGE_CPU_KERNELS", "1") == "0":
        return None
    folder = build_dir()
    built = folder / f"{NAME}.so"
    if built.exists():  # built before: import it (ms), without the build tool's checks (seconds per process)
        try:
            return _import(built)
        except ImportError as exc:
            log.warning("rebuilding the CPU attention kernel: %s", exc)
    from torch.utils import cpp_extension
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(NAME, [str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                                  build_directory=str(folder), verbose=False)
    except (RuntimeError, OSError, subprocess.CalledProcessError, ImportError) as exc:
        log.warning("the CPU attention kernel could not be built (%s); using the torch reference", exc)
        return None


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CpuBackend:
    """Attention over a whole packed step (``packed_attention``) with the compiled kernel."""

    packed = True
    packs_linears = True  # the runner packs the model's linear layers for oneDNN (``packing``)
    sdpa_prefills = True  # long prefill chunks with wide heads go to SDPA (``runner.attends_by_sdpa``)
    store_kv = staticmethod(store_kv)

    def __init__(self, module: Any) -> None:
        self.module = module

    def packed_attention(self, q: torch.Tensor, kv_cache: torch.Tensor, tables: torch.Tensor,
                         table_rows: torch.Tensor, ctx_lens: torch.Tensor, block_size: int, scale: float,
                         window: int | None = None, softcap: float | None = None) -> torch.Tensor:
        """q [T, heads, dim]: row t attends to positions [0, ctx_lens[t]) (its window's part) of
        block-table row ``table_rows[t]`` of ``tables`` [B, width] -> [T, heads, dim]."""
        return self.module.paged_attention(q.contiguous(), kv_cache, tables, table_rows, ctx_lens, block_size, scale,
                                           window or 0, softcap or 0.0)

    def decode_attention(self, q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                         ctx_lens: torch.Tensor, block_size: int, scale: float, window: int | None = None,
                         softcap: float | None = None) -> torch.Tensor:
        """The reference's decode signature: row i reads block-table row i."""
        rows = torch.arange(len(q), dtype=torch.int32)
        return self.packed_attention(q, kv_cache, block_tables.contiguous(), rows, ctx_lens, block_size, scale,
                                     window, softcap)


def cpu_backend() -> CpuBackend | None:
    module = extension()
    return None if module is None else CpuBackend(module)
