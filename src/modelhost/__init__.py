"""modelhost: dedicated, autoscaled LLM endpoints on your own GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ModelhostAPIError",
    "ModelhostConnectionError",
    "ModelhostError",
    "ModelhostRateLimitError",
    "ModelhostSpendingLimitError",
    "ModelhostTimeoutError",
    "__version__",
]

if TYPE_CHECKING:
    from modelhost.client import Client
    from modelhost.client.errors import (
        ModelhostAPIError,
        ModelhostConnectionError,
        ModelhostError,
        ModelhostRateLimitError,
        ModelhostSpendingLimitError,
        ModelhostTimeoutError,
    )

# The SDK is imported on first use so that engine processes, which import this package, don't
# pay for httpx and pydantic models they never use.
_LAZY = {
    "Client": "modelhost.client",
    "ModelhostAPIError": "modelhost.client",
    "ModelhostConnectionError": "modelhost.client",
    "ModelhostError": "modelhost.client",
    "ModelhostRateLimitError": "modelhost.client",
    "ModelhostSpendingLimitError": "modelhost.client",
    "ModelhostTimeoutError": "modelhost.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelhost' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
