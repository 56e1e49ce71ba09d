"""Downloading weights from the Hugging Face Hub, with errors a user can act on.

Replicas report progress as plain stderr lines (`modelhost-progress: ...`) that the control
plane can turn into events; the HF token comes from the environment (HF_TOKEN) and is never
logged. Offline machines must fail fast: the hub's own timeouts are shortened and the failure
is reported as "no network access" instead of a stack trace after minutes of retries.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelhost.adapters.hub_errors import describe_hub_error

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
