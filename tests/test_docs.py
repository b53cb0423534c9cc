"""Every shell command shown in README.md and docs/*.md runs as written.

The commands are taken from the documents' ``bash``/``sh``/``console`` code blocks (in a
``console`` block, the lines that start with ``$ ``) and run in document order, in a scratch
directory where ``examples/`` and ``benchmarks/`` are the repository's (``./dev`` runs in the
checkout):

- ``omnistage serve ... &`` starts a server that stays up for the document's later commands (until
  another server takes its port); ``omnistage serve ...`` without ``&`` must come up healthy
  (``/health`` 200) and is stopped again;
- the other commands of a block run together as one bash script (``set -e``, so shell variables
  carry from line to line), which must exit with status 0 and print no API error;
- a command marked ``# needs: <what>`` (a model hub, a GPU, Docker, a Ray cluster) cannot run on an
  offline CPU machine: it is listed as skipped, with that reason.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("bash", "sh", "shell", "console")
NEEDS = re.compile(r"#\s*needs:\s*(.+)$")
# Commands this test does not run itself, and why (what runs them instead).
ELSEWHERE = {
    "./dev test": "runs this test suite (CI runs exactly that command)",
    "./dev demo": "sets up, then runs `omnistage demo`, which tests/test_cli.py runs and checks",
}
SERVE_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 600


@dataclass(frozen=True)
class Command:
    text: str  # as written, without its trailing comment
    source: str  # document:line
    needs: str | None = None  # why it cannot run here
    block: int = 0  # which code block of its document (a console block's commands each count as one)

    @property
    def serves(self) -> bool:
        return self.text.split()[:2] == ["omnistage", "serve"] and "--print-graph" not in self.text.split()

    @property
    def background(self) -> bool:
        return self.text.endswith("&")

    @property
    def port(self) -> int:
        words = shlex.split(self.text.rstrip("&"))
        return int(words[words.index("--port") + 1]) if "--port" in words else 8000


def commands(doc: Path) -> list[Command]:
    """The shell commands of a document's code blocks, continuation lines joined, in order."""
    out: list[Command] = []
    lang, pending, start, block = None, "", 0, 0
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.startswith("```"):
            lang = None if lang is not None else (line[3:].strip() or "text")
            block += 1
            continue
        if lang not in SHELLS:
            continue
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line, block = line[2:], block + 1
        if not pending:
            start = number
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        text, needs = _strip_comment(pending)
        if text:
            out.append(Command(text, f"{doc.name}:{start}", needs, block))
        pending = ""
    return out


def _strip_comment(line: str) -> tuple[str, str | None]:
    """The command without a trailing ``# ...`` comment (outside quotes), and its ``needs:``."""
    quote, cut = None, len(line)
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            cut = i
            break
    comment = line[cut:]
    match = NEEDS.search(comment)
    return line[:cut].strip(), match.group(1).strip() if match else None


def test_commands_are_read_from_code_blocks(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text('text\n```bash\nomnistage serve examples/a.yaml &   # in the background\ncurl -s "http://x/#frag" \\\n'
                   '  -d \'{"a": 1}\'\nomnistage serve Org/Model   # needs: a model hub\n```\n```python\nprint(1)\n```\n'
                   '```console\n$ omnistage validate examples/a.yaml\ngraph ok\n```\n')
    found = commands(doc)
    assert [c.text for c in found] == ["omnistage serve examples/a.yaml &", 'curl -s "http://x/#frag"   -d \'{"a": 1}\'',
                                       "omnistage serve Org/Model", "omnistage validate examples/a.yaml"]
    assert [c.needs for c in found] == [None, None, "a model hub", None]
    assert found[0].block == found[1].block == found[2].block != found[3].block
    assert found[0].serves and found[0].background and found[0].port == 8000 and found[1].source == "x.md:4"


def test_a_failing_command_or_an_api_error_fails_the_check(tmp_path):
    env = _environment()
    run_script([Command("x=1", "t.md:1"), Command('test "$x" = 1', "t.md:2")], tmp_path, env)  # one shell
    for text in ("false", "echo '{\"error\": {\"message\": \"unknown parameter\"}}'", "exit 0 | false"):
        with pytest.raises(AssertionError, match="t.md:1"):
            run_script([Command(text, "t.md:1")], tmp_path, env)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nstages: {}\n")
    servers = Servers(tmp_path, env)
    try:
        with pytest.raises(pytest.fail.Exception, match="exited with 1"):
            servers.start(Command(f"omnistage serve {broken} --port 8765", "t.md:1"))
    finally:
        servers.stop_all()


def test_every_example_graph_is_served_by_a_documented_command():
    served = {c.text.split()[2] for doc in DOCUMENTS for c in commands(doc) if c.serves and len(c.text.split()) > 2}
    missing = [p.name for p in sorted((ROOT / "examples").glob("*.yaml")) if f"examples/{p.name}" not in served]
    assert not missing, f"document `omnistage serve` for: {', '.join(missing)}"


class Servers:
    """The servers a document started, by port."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env, self.running = cwd, env, {}

    def start(self, command: Command) -> None:
        self.stop(command.port)
        if _answers(command.port):  # something else holds the port: its /health would pass for ours
            pytest.fail(f"{command.source}: port {command.port} is in use by another process")
        proc = subprocess.Popen(command.text.rstrip("&").strip(), shell=True, cwd=self.cwd, env=self.env,
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.running[command.port] = proc
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{command.source}: `{command.text}` exited with {proc.returncode}:\n{proc.stderr.read()}")
            if _healthy(command.port):
                return
            time.sleep(0.5)
        pytest.fail(f"{command.source}: `{command.text}` not healthy after {SERVE_TIMEOUT_S} s")

    def stop(self, port: int) -> None:
        proc = self.running.pop(port, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for port in list(self.running):
            self.stop(port)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


def run_script(script: list[Command], cwd: Path, env: dict[str, str]) -> None:
    """Run commands of one block together; they must succeed and print no API error."""
    if not script:
        return
    where = ROOT if script[0].text.startswith("./dev") else cwd
    text = "\n".join(c.text for c in script)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", text], cwd=where, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)
    failed = done.returncode != 0 or re.search(r'"error":\s*\{', done.stdout)
    assert not failed, f"{script[0].source}: status {done.returncode}\n{text}\n--- out\n{done.stdout}\n--- err\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(3 * COMMAND_TIMEOUT_S)  # a document runs several commands, each allowed COMMAND_TIMEOUT_S
@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.name)
def test_every_documented_command_runs(doc, tmp_path, capsys):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "benchmarks").symlink_to(ROOT / "benchmarks")
    servers = Servers(tmp_path, _environment())
    skipped, script = [], []
    try:
        for command in commands(doc):
            if script and command.block != script[-1].block:
                run_script(script, tmp_path, servers.env)
                script = []
            reason = command.needs or ELSEWHERE.get(command.text)
            if reason is not None:
                skipped.append(f"{command.source}: `{command.text}` ({reason})")
            elif command.serves:
                run_script(script, tmp_path, servers.env)
                script = []
                servers.start(command)
                if not command.background:
                    servers.stop(command.port)
            else:
                script.append(command)
        run_script(script, tmp_path, servers.env)
    finally:
        servers.stop_all()
    with capsys.disabled():
        for line in skipped:
            print(f"\n  skipped {line}", end="")
