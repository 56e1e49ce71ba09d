"""Where the builtin engine's weights come from, and the errors a user sees when they can't.

The Hugging Face Hub is unreachable here, so hub answers are played by an in-process mock
transport plugged into huggingface_hub's own HTTP client; the offline case uses a closed port
on 127.0.0.1, the way an offline machine fails.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelhost.engine.builtin.weights import WeightsError, resolve_weights

REPO = "meta-llama/Llama-2-7b-chat-hf"


@pytest.fixture
def hub_answers() -> Iterator[Callable[[int, str | None], None]]:
    import httpx2
    from huggingface_hub.utils import _http

    original = _http._GLOBAL_CLIENT_FACTORY

    def install(status: int, error_code: str | None) -> None:
        def handler(request: httpx2.Request) -> httpx2.Response:
            headers = {"X-Error-Code": error_code} if error_code else {}
            return httpx2.Response(status, headers=headers, json={"error": "no"})

        _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))

    yield install
    _http.set_client_factory(original)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resolve_repo(
    tmp_path: Path, endpoint: str = "https://huggingface.co", rev: str | None = None
) -> None:
    resolve_weights(
        local=None,
        hf_repo=REPO,
        hf_revision=rev,
        cache_dir=tmp_path,
        emit=lambda _msg: None,
        hf_endpoint=endpoint,
    )


def test_offline_fails_with_an_actionable_message(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        resolve_repo(tmp_path, endpoint=f"http://127.0.0.1:{closed_port()}")
    expected = f"could not download {REPO}: no network access to the Hugging Face Hub"
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("status", "code", "needle"),
    [
        (403, "GatedRepo", "access denied (403)"),
        (401, "RepoNotFound", "access denied (401)"),
        (404, "RepoNotFound", "no such repository"),
        (404, "RevisionNotFound", "revision 'v9' does not exist"),
        (500, None, "answered HTTP 500"),
    ],
)
def test_hub_refusals_are_explained(
    tmp_path: Path,
    hub_answers: Callable[[int, str | None], None],
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    code: str | None,
    needle: str,
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_never_shown")
    hub_answers(status, code)
    with pytest.raises(WeightsError) as info:
        resolve_repo(tmp_path, rev="v9")
    message = str(info.value)
    assert message.startswith(f"could not download {REPO}")
    assert needle in message
    assert "hf_secret_value_never_shown" not in message


def test_local_paths_that_are_not_weights(tmp_path: Path) -> None:
    def resolve(path: Path) -> None:
        resolve_weights(local=str(path), hf_repo=None, hf_revision=None, cache_dir=tmp_path / "c")

    with pytest.raises(WeightsError, match="does not exist"):
        resolve(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(WeightsError, match=r"neither a \.gguf file"):
        resolve(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no HF weights"):
        resolve(empty)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(WeightsError, match="cannot read"):
        resolve(bad)
    assert not list((tmp_path / "c").glob("gguf/*"))  # no half-written cache entry left
