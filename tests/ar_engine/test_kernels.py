"""Triton kernels against the torch reference, in Triton's interpreter (no GPU needed)."""
import os
import subprocess
import sys
from pathlib import Path


def test_triton_kernels_match_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    script = Path(__file__).with_name("kernel_check.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kernels match the reference" in done.stdout
