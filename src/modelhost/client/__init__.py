"""The modelhost Python SDK: one `Client` for the control-plane REST API (deployments,
adapters, tokens, users, logs) and helpers for inference through the OpenAI-compatible routes.

    from modelhost import Client
"""

from modelhost.client.client import Client
from modelhost.client.errors import (
    ModelhostAPIError,
    ModelhostConnectionError,
    ModelhostError,
    ModelhostRateLimitError,
    ModelhostSpendingLimitError,
    ModelhostTimeoutError,
)

__all__ = [
    "Client",
    "ModelhostAPIError",
    "ModelhostConnectionError",
    "ModelhostError",
    "ModelhostRateLimitError",
    "ModelhostSpendingLimitError",
    "ModelhostTimeoutError",
]
