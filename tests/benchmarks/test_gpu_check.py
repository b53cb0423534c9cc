"""The GPU check script's CPU side: the whole script at toy sizes on this CPU (its kernels in
Triton's interpreter), its report and RESULT line, and the wheel pins it installs from."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_the_check_runs_end_to_end_at_toy_sizes_on_a_cpu(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = done.stdout.strip().splitlines()[-1]
    assert result.startswith("RESULT decode_floor_ratio=") and "prefill_mfu=" in result
    assert "ar_vs_hf=" in result and "diffusion_vs_diffusers=" in result
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"]["kernels"].startswith("equal to the reference in float32, float16")
    assert "greedy text equals HF generate" in report["checks"]["graph"]
    hf_row = next(r for r in report["decode"] if "hf_tok_s" in r)
    assert hf_row["same_tokens"] == 1.0  # the engine and HF generate agree on the same random model
    assert [r["batch"] for r in report["decode"]] == [1, 4] and all(r["floor_ratio"] > 0 for r in report["decode"])
    assert report["checks"]["hand-off"] == "host-path hand-offs of 1 MiB arrived bit-identical"
    assert [r["mib"] for r in report["handoff"]] == [1] and report["handoff"][0]["host_ms"] > 0
    assert (tmp_path / "gpu_check.txt").read_text().startswith("GPU check ")


def test_only_wheels_missing_or_at_another_version_are_installed(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_check import PINS, install_wheels
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import importlib.metadata
    (tmp_path / PINS).write_text(json.dumps({"msgspec": importlib.metadata.version("msgspec")}))
    assert install_wheels(tmp_path) == []  # present at the pinned version: pip is not even run
