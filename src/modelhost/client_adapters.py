"""The SDK's LoRA adapter calls (`/v1/adapters`), mixed into `modelhost.Client`.

with Client(url, token) as mh:
    mh.create_adapter("french", base="alice/smol", local="/srv/adapters/french")
    # then call it by name: mh.openai().chat.completions.create(model="alice/french", ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class Adapter(BaseModel):
    """A registered LoRA adapter. `name` is `<owner>/<name>`, `base` the base deployment's."""

    model_config = ConfigDict(extra="allow")

    adapter_id: str
    name: str
    base: str
    base_deploy_id: str | None = None
    source: dict[str, Any] = {}
    rank: int | None = None
    target_modules: list[str] = []
    public: bool = False
    size_bytes: int | None = None
    created_at: datetime | None = None


class AdapterCalls:
    """Needs `_request` from `Client`."""

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        raise NotImplementedError

    def create_adapter(
        self,
        name: str,
        *,
        base: str,
        local: str | None = None,
        hf: Mapping[str, Any] | None = None,
        public: bool = False,
    ) -> Adapter:
        """Register an adapter on the deployment `base` ("<username>/<deployment>"); its files
        come from `local` (an absolute folder on the server) or `hf` ({"repo", "revision",
        "token"}). The server validates it against the base (400 saying why it does not fit)."""
        if (local is None) == (hf is None):
            raise ValueError("give exactly one of local= or hf=")
        source: dict[str, Any] = (
            {"local": {"path": local}}
            if local is not None
            else {"hf": {k: v for k, v in dict(hf or {}).items() if v is not None}}
        )
        body = {"name": name, "base": base, "source": source, "public": public}
        return Adapter.model_validate(self._request("POST", "/v1/adapters", json_body=body))

    def list_adapters(self) -> list[Adapter]:
        body = self._request("GET", "/v1/adapters")
        items = body.get("adapters", []) if isinstance(body, dict) else body
        return [Adapter.model_validate(a) for a in items]

    def get_adapter(self, name: str) -> Adapter:
        """`name` is the adapter's own name (without the owner)."""
        return Adapter.model_validate(self._request("GET", f"/v1/adapters/{name}"))

    def delete_adapter(self, name: str) -> str:
        """Delete it (its files too); returns its adapter_id."""
        body = self._request("DELETE", f"/v1/adapters/{name}")
        return str(body.get("adapter_id", "")) if isinstance(body, dict) else ""
