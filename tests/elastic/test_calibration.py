"""A calibration names its date and commit; it is stale once the engines change after that
commit (committed or not), and says why; outside git it says it cannot tell."""
import subprocess

from omnistage.elastic.calibration import load, save, staleness
from omnistage.elastic.sim import StageModel

MODELS = [StageModel("chat", 0.001, 0.0001, 128, 64)]


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def commit(root, path, text, message):
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)


def test_a_calibration_is_stale_once_the_engines_change_after_it(tmp_path):
    git(tmp_path, "init", "-q")
    commit(tmp_path, "omnistage/ar_engine/engine.py", "v1", "engine")
    cal = save(tmp_path / "cal.json", MODELS, tmp_path)
    assert load(tmp_path / "cal.json") == cal and cal.commit and not cal.dirty and cal.date
    assert staleness(cal, tmp_path) == ""
    commit(tmp_path, "README.md", "docs", "not an engine")
    assert staleness(cal, tmp_path) == ""
    (tmp_path / "omnistage/ar_engine/engine.py").write_text("v2")
    assert staleness(cal, tmp_path) == "the engines have uncommitted changes"
    assert save(tmp_path / "dirty.json", MODELS, tmp_path).dirty
    commit(tmp_path, "omnistage/ar_engine/engine.py", "v2", "faster engine")
    assert staleness(cal, tmp_path).startswith("the engines changed after it was measured")


def test_outside_git_it_says_it_cannot_tell(tmp_path):
    cal = save(tmp_path / "cal.json", MODELS, tmp_path)
    assert cal.commit == "" and staleness(cal, tmp_path) == "it names no commit it was measured at"
