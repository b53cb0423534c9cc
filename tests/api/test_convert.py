import pytest

from omnistage.api.convert import chat_inputs
from omnistage.api.errors import ApiError
from omnistage.errors import RequestRejected


def body(url):
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "what is it?"}]}]}


def test_data_urls_pass_through():
    inputs = chat_inputs(body("data:image/png;base64,AAAA"))
    assert inputs["images"] == ["data:image/png;base64,AAAA"]
    assert inputs["messages"][0]["content"][0] == {"type": "image"}


def test_local_files_only_under_the_media_dir(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"\x89PNG fake")
    with pytest.raises(ApiError, match="--media-dir"):
        chat_inputs(body(str(tmp_path / "cat.png")))
    assert chat_inputs(body(f"file://{tmp_path / 'cat.png'}"), str(tmp_path))["images"] == [b"\x89PNG fake"]
    with pytest.raises(RequestRejected, match="must be under"):
        chat_inputs(body("/etc/passwd"), str(tmp_path))
    with pytest.raises(RequestRejected, match="must be under"):
        chat_inputs(body(str(tmp_path / ".." / "x.png")), str(tmp_path))


def test_remote_urls_are_refused():
    with pytest.raises(ApiError, match="not fetched") as err:
        chat_inputs(body("https://example.com/cat.png"))
    assert err.value.status == 400 and err.value.param == "messages[0].content[0]"
