"""Downloading weights from the Hugging Face Hub, with errors a user can act on.

Replicas report progress as plain stderr lines (`modelhost-progress: ...`) that the control
plane can turn into events; the HF token comes from the environment (HF_TOKEN) and is never
logged. Offline machines must fail fast: the hub's own timeouts are shortened and the failure
is reported as "no network access" instead of a stack trace after minutes of retries.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROGRESS_PREFIX = "modelhost-progress: "
# What the engine needs from a repo: config, tokenizer, safetensors weights.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
_CONNECT_TIMEOUT_S = 5.0


class HubDownloadError(Exception):
    """A download failed; the message says why in words a user can act on."""


def _progress_class(repo: str, emit: Callable[[str], None]) -> type[Any]:
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    class LineProgress(tqdm):  # type: ignore[misc]
        """Turns the hub's progress bars into one log line every few seconds per bar."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            super().__init__(*args, **kwargs)
            self._last_emit = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            result: bool | None = super().update(n)
            now = time.monotonic()
            if now - self._last_emit >= 2.0 or (self.total and self.n >= self.total):
                self._last_emit = now
                emit(self._describe())
            return result

        def _describe(self) -> str:
            if self.unit == "B":
                done = f"{self.n / 1e6:.1f} MB"
                total = f" of {self.total / 1e6:.1f} MB" if self.total else ""
                pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
                return f"downloading {repo}: {done}{total}{pct}"
            return f"downloading {repo}: {self.n}/{self.total or '?'} files"

        def close(self) -> None:
            handle = self.fp
            super().close()
            handle.close()

    return LineProgress


def stderr_progress(message: str) -> None:
    sys.stderr.write(PROGRESS_PREFIX + message + "\n")
    sys.stderr.flush()


def describe_hub_error(repo: str, revision: str | None, exc: BaseException) -> str:
    """Map an exception from huggingface_hub to the sentence the user sees."""
    from huggingface_hub import errors

    where = f"could not download {repo}"
    rev = f" at revision {revision}" if revision else ""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if os.environ.get("HF_TOKEN"):
        token = "the HF token given cannot read it"
    else:
        token = "no HF token is set"
    if isinstance(exc, errors.GatedRepoError) or status == 403:
        return (
            f"{where}: access denied ({status or 'gated'}): the repository is gated or private "
            f"and {token}; accept its terms on the Hub and give the deployment an HF token "
            "that can read it"
        )
    if status == 401:
        # The Hub answers 401 both for private repos and for names that do not exist.
        return (
            f"{where}: access denied (401): the repository does not exist or is private, and "
            f"{token}; check the name and the deployment's HF token"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{where}: revision {revision!r} does not exist in the repository"
    if isinstance(exc, errors.RepositoryNotFoundError) or status == 404:
        return f"{where}{rev}: no such repository on the Hugging Face Hub (check the name)"
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled):
        # The hub client falls back to its cache on any failure; the cause tells which.
        answered = _http_status_in_chain(exc)
        if answered is not None:
            return f"{where}: the Hugging Face Hub answered HTTP {answered}; try again later"
        return f"{where}: no network access to the Hugging Face Hub"
    if isinstance(exc, ConnectionError | TimeoutError) or _is_network_error(exc):
        return f"{where}: no network access to the Hugging Face Hub"
    if isinstance(exc, errors.HfHubHTTPError):
        return f"{where}: the Hugging Face Hub answered {status}: {exc}"
    return f"{where}: {type(exc).__name__}: {exc}"


def _http_status_in_chain(exc: BaseException) -> int | None:
    seen: BaseException | None = exc.__cause__ or exc.__context__
    while seen is not None:
        status = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


_NETWORK_ERRORS = {"TransportError", "ConnectError", "TimeoutException", "NetworkError"}


def _is_network_error(exc: BaseException) -> bool:
    """Connection failures anywhere in the chain; matched by name because the hub client's
    HTTP library (httpx or its fork httpx2) depends on the huggingface_hub version."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if any(cls.__name__ in _NETWORK_ERRORS for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def download(
    repo: str,
    revision: str | None,
    cache_dir: Path,
    *,
    endpoint: str | None = None,
    emit: Callable[[str], None] = stderr_progress,
) -> Path:
    """Fetch (or reuse from the local cache) a snapshot of `repo` and return its folder."""
    from huggingface_hub import snapshot_download

    emit(f"resolving {repo}{'@' + revision if revision else ''} on the Hugging Face Hub")
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            cache_dir=str(cache_dir),
            token=os.environ.get("HF_TOKEN") or None,
            allow_patterns=ALLOW_PATTERNS,
            etag_timeout=_CONNECT_TIMEOUT_S,
            endpoint=endpoint,
            tqdm_class=_progress_class(repo, emit),
        )
    except Exception as exc:
        raise HubDownloadError(describe_hub_error(repo, revision, exc)) from None
    emit(f"downloaded {repo}")
    return Path(str(folder))
