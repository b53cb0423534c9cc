"""GPU check: omnistage's GPU path checked for correctness on the card, then timed against the
card's own floors and the plain libraries, in one call.

Checks: the Triton kernels against the torch reference (fp32, fp16, bf16), an end-to-end graph
on the device whose greedy tokens equal HF ``generate`` there. Timings, on a ~1B-parameter
random Qwen2 in bf16: decode tokens/s and per-step latency at batch 1/16/64/256 against HF
``generate`` and against the memory-bandwidth floor (weight bytes / measured copy bandwidth per
decode step); prefill FLOP/s against the measured bf16 matmul peak; step-batched diffusion
against diffusers one at a time. Writes ``gpu_check.txt`` and ``gpu_check.json`` under ``--out``
and ends with one RESULT line.

The GPU machine reaches no package index: carry the wheels its image lacks, pinned to this
checkout's versions, and install them there first:

    python benchmarks/gpu_check.py --download-wheels .gpu_wheels
    python benchmarks/gpu_check.py --wheels .gpu_wheels --out "$OUT"   # needs: a GPU

``--device cpu --smoke`` runs the same code at toy sizes on a CPU (the test suite does).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
# What the GPU image lacks (or has at another version) of what the check imports; their own
# dependencies come with transformers, which the image has.
WHEELS = ("pyzmq", "msgspec", "diffusers", "transformers", "importlib_metadata", "zipp")
PINS = "pins.json"


def download_wheels(target: Path, python: str = "3.12") -> None:
    """This checkout's versions of WHEELS as manylinux wheels for the GPU image's Python."""
    pins = {name: importlib.metadata.version(name) for name in WHEELS}
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    python, "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "-d",
                    str(target), *(f"{n}=={v}" for n, v in pins.items())], check=True)
    (target / PINS).write_text(json.dumps(pins, indent=1))


def install_wheels(source: Path) -> list[str]:
    """Install, from ``source`` only, each pinned package that is missing or at another version."""
    pins = json.loads((source / PINS).read_text())
    wanted = [f"{n}=={v}" for n, v in pins.items() if _version(n) != v]
    if wanted:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
                        str(source), *wanted], check=True)
    return wanted


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (a CPU run of the same code)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--wheels", type=Path, help="install the pinned wheels from this directory first")
    parser.add_argument("--download-wheels", type=Path, help="only download the wheels into this directory")
    args = parser.parse_args()
    if args.download_wheels:
        download_wheels(args.download_wheels)
        return 0
    if args.wheels:
        print("installed:", ", ".join(install_wheels(args.wheels)) or "nothing (all present)", flush=True)
    from gpu_report import run  # (imports omnistage: after the wheels are in)
    return run(args.device, args.smoke, args.out)


if __name__ == "__main__":
    sys.exit(main())
