"""The sentence a user sees when the Hugging Face Hub refuses or cannot be reached: one wording
for a deployment's weights (the builtin engine's download) and for an adapter's files."""

from __future__ import annotations

import os
import socket


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
