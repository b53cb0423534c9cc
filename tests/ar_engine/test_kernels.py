"""Triton kernels against the torch reference, in Triton's interpreter (no GPU needed)."""
import os
import subprocess
import sys
from pathlib import Path


def _interpret(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, str(Path(__file__).with_name(script))], env=env, capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parents[2])


def test_triton_kernels_match_reference_in_interpreter():
    done = _interpret("kernel_check.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kernels match the reference" in done.stdout


def test_triton_kernels_address_a_cache_past_two_to_the_31_elements():
    """A sparse memory-mapped cache of several GiB: slots at its end stored and attended over,
    only their pages touched (a 32-bit offset wraps there, and the load faults or reads wrong)."""
    done = _interpret("kernel_offsets_check.py")
    assert done.returncode == 0, f"status {done.returncode}\n{done.stdout}{done.stderr}"
    assert "kernels address past 2^31 elements" in done.stdout
