import socket
import threading

import pytest
import uvicorn

from omnistage.api.app import create_app
from tests.conftest import ROOT

API_KEY = "test-key"


class Server:
    def __init__(self, graph, **kwargs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(graph, **kwargs)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        started = threading.Event()
        for _ in range(1200):  # the graph's workers load their models during start-up
            if self.server.started:
                break
            started.wait(0.1)
        assert self.server.started, "server did not start"
        return self

    @property
    def pipeline(self):
        return self.app.state.pipeline

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="session")
def chat_server():
    with Server(ROOT / "examples" / "text_chat.yaml", api_key=API_KEY, max_body=1 << 20) as server:
        yield server


@pytest.fixture(scope="session")
def vl_server():
    with Server(ROOT / "examples" / "vl_chat.yaml") as server:
        yield server


@pytest.fixture(scope="session")
def default_server():
    """The packaged any-to-any graph (`omnistage serve` with no graph) on tiny models: chat,
    images, video, speech."""
    from tests.conftest import tiny_default_graph
    with Server(tiny_default_graph()) as server:
        yield server
