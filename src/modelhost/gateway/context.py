"""The parts of a server the inference routes use (`serve.services.Services` provides them)."""

from __future__ import annotations

from typing import Protocol

from modelhost.config import Settings
from modelhost.directory.live import Directory
from modelhost.store.token_usage import TokenUsage


class GatewayServices(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def directory(self) -> Directory: ...

    @property
    def token_usage(self) -> TokenUsage: ...
