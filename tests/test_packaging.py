"""The wheel a user installs: it builds, installs into a fresh virtual environment, carries its
packaged graph and console script, and declares the dependencies a clean machine needs."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_the_wheel_builds_installs_and_runs(tmp_path):
    # Built from a copy: a build writes egg-info and build/ next to its sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "dist",
                                                             "__pycache__", ".pytest_cache", "demo-output"))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # (a checkout on the path is no install)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, env=clean)
    [wheel] = (tmp_path / "dist").glob("omnistage-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "omnistage/graphs/default.yaml" in names and "omnistage/py.typed" in names
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert not any(r.startswith("torchaudio") for r in requires)  # the registry's is a CUDA build
    assert any(r.startswith("soxr") for r in requires) and any(r.startswith("httpx") for r in requires)
    assert any(r.startswith("transformers") and "<" in r for r in requires)
    assert any(r.startswith("diffusers") and "<" in r for r in requires)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, env=clean)
    # The dependencies come from this environment (nothing is downloaded); omnistage from the wheel.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    version = subprocess.run([str(venv / "bin" / "omnistage"), "--version"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, check=True).stdout
    assert version.strip() == "omnistage 0.1.0"
    where = subprocess.run([str(python), "-c", "import omnistage.cli as c; print(c.__file__); "
                            "print(c.DEFAULT_GRAPH.exists())"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, check=True).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "True"
    graph = Path(where[0]).parent / "graphs" / "default.yaml"
    plan = subprocess.run([str(venv / "bin" / "omnistage"), "validate", str(graph)], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert plan.returncode == 0 and "omnistage-tiny" in plan.stdout, plan.stderr
