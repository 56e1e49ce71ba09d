"""The modelhost Python SDK: a typed, synchronous client for the control-plane REST API.

    from modelhost import Client
    with Client("http://127.0.0.1:8080", token) as mh:
        dep = mh.create_llm("tiny", base_model="smollm2-135m-instruct")
        dep = mh.wait_until_settled(dep.deploy_id, timeout=600)

Inference goes through the OpenAI-compatible routes: point the official `openai` package at
`<server>/v1/openai` with the same token (`Client.openai()` does that), or use
`Client.chat_stream()`, which needs nothing beyond httpx.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import httpx

from modelhost.client.errors import (
    ModelhostAPIError,
    ModelhostConnectionError,
    ModelhostTimeoutError,
    error_from_response,
)
from modelhost.client.models import (
    Adapter,
    ApiToken,
    CatalogModel,
    CreatedUser,
    DeployEvent,
    Deployment,
    GpuType,
    Invoice,
    InvoiceSummary,
    LogEntry,
    Me,
    Pricing,
    RateLimits,
    SpendingLimit,
    Usage,
    User,
)
from modelhost.client.sse import ChatDelta, iter_chat_deltas

if TYPE_CHECKING:
    import openai

__all__ = ["Client"]

SinceT = datetime | float | int | str
# Money in: a decimal string ("50", "0.200000"), a Decimal or an int of USD; never a float.
MoneyT = str | Decimal | int
# Rate limits in: a `RateLimits` or a mapping {"rpm": int | None, "tpm": int | None}.
RateLimitsT = RateLimits | Mapping[str, int | None]
# Prices in: a `Pricing` or a mapping {"usd_per_1m_prompt_tokens", "usd_per_1m_completion_tokens"}.
PricingT = Pricing | Mapping[str, MoneyT]


def _unwrap_list(body: Any, *keys: str) -> list[Any]:
    """Accept a bare JSON list or an object wrapping it under one of `keys`."""
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in keys:
            value = body.get(key)
            if isinstance(value, list):
                return value
    raise ModelhostAPIError(200, "unexpected_response", f"expected a list, got: {body!r:.200}")


def _instant_param(value: datetime | str) -> str:
    # The server reads ISO 8601; a naive datetime is taken as UTC there.
    return value.isoformat() if isinstance(value, datetime) else value


def _since_param(since: SinceT) -> str:
    # The server takes unix seconds; a naive datetime is taken as local time, like Python does.
    return str(since.timestamp()) if isinstance(since, datetime) else str(since)


def _money(value: MoneyT) -> str:
    """The API's decimal string for an amount of USD; floats are refused (never exact)."""
    if isinstance(value, bool | float):
        raise TypeError("money must be a decimal string, a Decimal or an int, never a float")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a finite amount: {value!r}")
        return format(value, "f")
    return value.strip()


def _rate_limits_body(value: RateLimitsT | None) -> dict[str, int | None] | None:
    if value is None:
        return None
    if not isinstance(value, RateLimits):
        unknown = set(value) - {"rpm", "tpm"}
        if unknown:
            raise ValueError(f"rate_limits has unknown fields: {', '.join(sorted(unknown))}")
    limits = value if isinstance(value, RateLimits) else RateLimits.model_validate(dict(value))
    return {"rpm": limits.rpm, "tpm": limits.tpm}


def _pricing_body(value: PricingT | None) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Pricing):
        prompt: MoneyT = value.usd_per_1m_prompt_tokens
        completion: MoneyT = value.usd_per_1m_completion_tokens
    else:
        unknown = set(value) - {"usd_per_1m_prompt_tokens", "usd_per_1m_completion_tokens"}
        if unknown:
            raise ValueError(f"pricing has unknown fields: {', '.join(sorted(unknown))}")
        prompt = value["usd_per_1m_prompt_tokens"]
        completion = value["usd_per_1m_completion_tokens"]
    return {
        "usd_per_1m_prompt_tokens": _money(prompt),
        "usd_per_1m_completion_tokens": _money(completion),
    }


class Client:
    """Synchronous client. `transport` replaces the network layer (e.g. `httpx.MockTransport`
    in unit tests, or `httpx.HTTPTransport(retries=3)`); httpx.ASGITransport is async-only, so to
    drive an in-process app run it under uvicorn on 127.0.0.1 and pass its URL instead."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        from modelhost import __version__

        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": f"modelhost-python/{__version__}",
            },
            timeout=timeout,
            transport=transport,
        )

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection_error(self, exc: httpx.TransportError) -> ModelhostConnectionError:
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ModelhostConnectionError(
                self.base_url, f"{detail}; is `modelhost serve` running there?"
            )
        # Timeouts and connections dropped mid-response: the server was there.
        return ModelhostConnectionError(self.base_url, detail, connected=True)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            resp = self._http.request(method, path, json=json_body, params=params)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        if resp.is_error:
            raise error_from_response(resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except json.JSONDecodeError:
            return resp.text

    @contextmanager
    def _stream(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[httpx.Response]:
        # No read timeout: a followed log or a long generation may be quiet for a long time.
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            with self._http.stream(
                method, path, json=json_body, params=params, timeout=timeout
            ) as resp:
                if resp.is_error:
                    resp.read()
                    raise error_from_response(resp)
                yield resp
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc

    def _deployment_or_fetch(self, body: Any, deploy_id: str) -> Deployment:
        """Routes answer with the deploy object, or DeepInfra-style with just `{deploy_id}`."""
        if isinstance(body, dict) and "status" in body and "model_name" in body:
            return Deployment.model_validate(body)
        return self.get_deployment(deploy_id)

    # -- account, users, tokens -------------------------------------------------------------

    def me(self) -> Me:
        return Me.model_validate(self._request("GET", "/v1/me"))

    def create_user(
        self, username: str, gpu_limit: int | None = None, *, is_admin: bool = False
    ) -> CreatedUser:
        """Admin only. The answer carries the user's first token, shown this once."""
        body: dict[str, Any] = {"username": username}
        if gpu_limit is not None:
            body["gpu_limit"] = gpu_limit
        if is_admin:
            body["is_admin"] = True
        return CreatedUser.model_validate(self._request("POST", "/v1/users", json_body=body))

    def list_users(self) -> list[User]:
        body = self._request("GET", "/v1/users")
        return [User.model_validate(u) for u in _unwrap_list(body, "users", "data")]

    def update_user(
        self,
        username: str,
        gpu_limit: int | None = None,
        *,
        rate_limits: RateLimitsT | EllipsisType | None = ...,
    ) -> User:
        """Admin only: change a user's GPU quota and/or rate limits (requests and tokens per
        minute over all their requests; `None` removes them, `...` leaves them). Applied live."""
        body: dict[str, Any] = {}
        if gpu_limit is not None:
            body["gpu_limit"] = gpu_limit
        if not isinstance(rate_limits, EllipsisType):
            body["rate_limits"] = _rate_limits_body(rate_limits)
        if not body:
            raise ValueError("update_user needs gpu_limit or rate_limits")
        return User.model_validate(self._request("PUT", f"/v1/users/{username}", json_body=body))

    def delete_user(self, username: str) -> None:
        self._request("DELETE", f"/v1/users/{username}")

    def list_tokens(self) -> list[ApiToken]:
        body = self._request("GET", "/v1/api-tokens")
        return [ApiToken.model_validate(t) for t in _unwrap_list(body, "tokens", "data")]

    def create_token(self, name: str, *, rate_limits: RateLimitsT | None = None) -> ApiToken:
        """The returned `token` is shown this once. 409 if the name is in use. `rate_limits`
        are the token's own (its requests alone), counted besides the user's."""
        body: dict[str, Any] = {"name": name}
        if rate_limits is not None:
            body["rate_limits"] = _rate_limits_body(rate_limits)
        return ApiToken.model_validate(self._request("POST", "/v1/api-tokens", json_body=body))

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/v1/api-tokens/{token_id}")

    # -- deployments ------------------------------------------------------------------------

    def create_llm(
        self,
        model_name: str,
        *,
        gpu: str = "CPU",
        num_gpus: int = 1,
        max_batch_size: int = 96,
        hf: Mapping[str, Any] | None = None,
        local: Mapping[str, Any] | str | None = None,
        base_model: str | None = None,
        engine: str = "auto",
        engine_args: Sequence[str] | None = None,
        settings: Mapping[str, Any] | None = None,
        public: bool = False,
        pricing: PricingT | None = None,
        rate_limits: RateLimitsT | None = None,
    ) -> Deployment:
        """Create a deployment (`POST /deploy/llm`). Weights: one of `hf` ({"repo", "revision",
        "token"}), `local` ({"path"} or a path string) or `base_model` (a catalog name).
        `pricing` (USD per 1M prompt/completion tokens) and `rate_limits` (per minute, for each
        caller) apply to callers other than the owner."""
        body: dict[str, Any] = {
            "model_name": model_name,
            "gpu": gpu,
            "num_gpus": num_gpus,
            "max_batch_size": max_batch_size,
            "engine": engine,
            "engine_args": list(engine_args or []),
        }
        if hf is not None:
            body["hf"] = {k: v for k, v in hf.items() if v is not None}
        if local is not None:
            body["local"] = {"path": local} if isinstance(local, str) else dict(local)
        if base_model is not None:
            body["base_model"] = base_model
        if settings is not None:
            body["settings"] = dict(settings)
        if public:
            # Only sent when asked for, so servers that predate public deployments still accept
            # the ordinary create body.
            body["public"] = True
        if pricing is not None:
            body["pricing"] = _pricing_body(pricing)
        if rate_limits is not None:
            body["rate_limits"] = _rate_limits_body(rate_limits)
        return Deployment.model_validate(self._request("POST", "/deploy/llm", json_body=body))

    def list_deployments(
        self, status: str | Sequence[str] | None = None, all: bool = False
    ) -> list[Deployment]:
        """The caller's deployments, optionally filtered by status; `all=True` (admin) lists
        every user's."""
        params: dict[str, str] = {}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        if all:
            params["all"] = "true"
        body = self._request("GET", "/deploy/list", params=params or None)
        return [Deployment.model_validate(d) for d in _unwrap_list(body, "deployments", "data")]

    def get_deployment(self, deploy_id: str) -> Deployment:
        return Deployment.model_validate(self._request("GET", f"/deploy/{deploy_id}"))

    def update_deployment(
        self,
        deploy_id: str,
        settings: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
        *,
        public: bool | None = None,
        pricing: PricingT | EllipsisType | None = ...,
        rate_limits: RateLimitsT | EllipsisType | None = ...,
    ) -> Deployment:
        """`settings` apply live; `config` (max_batch_size, engine_args, hf.revision) triggers a
        rolling replacement (status `updating`); `public` shares it with every user or not.
        `pricing` and `rate_limits` (for callers other than the owner) apply live: `None`
        removes them, `...` (the default) leaves them as they are."""
        body: dict[str, Any] = {}
        if settings is not None:
            body["settings"] = dict(settings)
        if config is not None:
            body["config"] = dict(config)
        if public is not None:
            body["public"] = public
        if not isinstance(pricing, EllipsisType):
            body["pricing"] = _pricing_body(pricing)
        if not isinstance(rate_limits, EllipsisType):
            body["rate_limits"] = _rate_limits_body(rate_limits)
        if not body:
            raise ValueError(
                "update_deployment needs settings, config, public, pricing or rate_limits"
            )
        resp = self._request("PUT", f"/deploy/{deploy_id}", json_body=body)
        return self._deployment_or_fetch(resp, deploy_id)

    def delete_deployment(self, deploy_id: str) -> str:
        body = self._request("DELETE", f"/deploy/{deploy_id}")
        if isinstance(body, dict) and isinstance(body.get("deploy_id"), str):
            return str(body["deploy_id"])
        return deploy_id

    def stop_deployment(self, deploy_id: str) -> Deployment:
        return self._deployment_or_fetch(
            self._request("POST", f"/deploy/{deploy_id}/stop"), deploy_id
        )

    def start_deployment(self, deploy_id: str) -> Deployment:
        return self._deployment_or_fetch(
            self._request("POST", f"/deploy/{deploy_id}/start"), deploy_id
        )

    def events(self, deploy_id: str) -> list[DeployEvent]:
        """Status changes, replica starts/exits and scaling decisions, newest last."""
        body = self._request("GET", f"/deploy/{deploy_id}/events")
        return [DeployEvent.model_validate(e) for e in _unwrap_list(body, "events", "data")]

    @staticmethod
    def _log_params(
        replica: str | None, since: SinceT | None, limit: int | None, follow: bool
    ) -> dict[str, str]:
        params: dict[str, str] = {}
        if replica is not None:
            params["replica"] = replica
        if since is not None:
            params["since"] = _since_param(since)
        if limit is not None:
            params["limit"] = str(limit)
        if follow:
            params["follow"] = "true"
        return params

    def logs(
        self,
        deploy_id: str,
        replica: str | None = None,
        since: SinceT | None = None,
        limit: int | None = None,
    ) -> list[LogEntry]:
        """Replica output so far (oldest first)."""
        params = self._log_params(replica, since, limit, False)
        body = self._request("GET", f"/deploy/{deploy_id}/logs", params=params)
        if body is None:
            return []
        if isinstance(body, str):
            entries = (LogEntry.from_line(line) for line in body.splitlines())
            return [e for e in entries if e is not None]
        raw = _unwrap_list(body, "entries", "logs", "lines", "data")
        return [
            LogEntry.model_validate(item) if isinstance(item, dict) else LogEntry(line=str(item))
            for item in raw
        ]

    def follow_logs(
        self,
        deploy_id: str,
        replica: str | None = None,
        since: SinceT | None = None,
        limit: int | None = None,
    ) -> Generator[LogEntry, None, None]:
        """Yield log entries as the replicas write them, until the server closes the stream (the
        deployment is gone) or the caller stops iterating (which closes the connection)."""
        params = self._log_params(replica, since, limit, True)
        with self._stream("GET", f"/deploy/{deploy_id}/logs", params=params) as resp:
            for raw in resp.iter_lines():
                entry = LogEntry.from_line(raw)
                if entry is not None:
                    yield entry

    def gpu_availability(self) -> list[GpuType]:
        body = self._request("GET", "/deploy/llm/gpu_availability")
        return [GpuType.model_validate(g) for g in _unwrap_list(body, "gpus")]

    def catalog_models(self) -> list[CatalogModel]:
        body = self._request("GET", "/v1/catalog/models")
        return [CatalogModel.model_validate(m) for m in _unwrap_list(body, "models")]

    def wait_until_settled(
        self,
        deploy_id: str,
        timeout: float = 900.0,
        *,
        poll_interval: float = 1.0,
        on_update: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Poll until the status leaves pending/initializing/updating and return the deployment
        (which may be `errored`: check `.status`). `on_update` sees every polled object.
        Raises ModelhostTimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            dep = self.get_deployment(deploy_id)
            if on_update is not None:
                on_update(dep)
            if dep.settled:
                return dep
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelhostTimeoutError(
                    f"deployment {deploy_id} still {dep.status} after {timeout:g}s"
                )
            time.sleep(min(poll_interval, remaining))

    # -- inference ----------------------------------------------------------------------------

    def chat_stream(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        **params: Any,
    ) -> Generator[ChatDelta, None, None]:
        """Stream a chat completion from `/v1/openai/chat/completions`. Extra keyword arguments
        are sent as OpenAI sampling parameters (top_p, stop, seed, ...)."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        body.update(params)
        with self._stream("POST", "/v1/openai/chat/completions", json_body=body) as resp:
            yield from iter_chat_deltas(resp.iter_lines(), resp.status_code)

    def openai(self) -> openai.OpenAI:
        """An `openai.OpenAI` client for this server and token (needs `pip install openai`)."""
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Client.openai() needs the `openai` package") from exc
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1/openai", api_key=self._token, timeout=self._timeout
        )

    # ---- LoRA adapters (/v1/adapters) --------------------------------------------------
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

    # ---- spending limits --------------------------------------------------------------------

    def spending_limit(self) -> SpendingLimit:
        """Your monthly spending limit, an admin's cap on it, and this month's spend."""
        return SpendingLimit.model_validate(self._request("GET", "/v1/me/spending-limit"))

    def set_spending_limit(
        self, usd_per_month: MoneyT | None, alert_at: Sequence[float] | None = None
    ) -> SpendingLimit:
        """Set your monthly limit in USD (`None`: none of your own) and, if given, the fractions
        of it at which an alert is sent (e.g. `[0.5, 0.8]`; None leaves them). Under an admin's
        cap, a limit above it (or none) is refused: 422 `over_spending_cap`."""
        body: dict[str, Any] = {
            "usd_per_month": None if usd_per_month is None else _money(usd_per_month)
        }
        if alert_at is not None:
            body["alert_at"] = list(alert_at)
        return SpendingLimit.model_validate(
            self._request("PUT", "/v1/me/spending-limit", json_body=body)
        )

    def user_spending_limit(self, username: str) -> SpendingLimit:
        """Admin only: another user's spending limit and spend."""
        return SpendingLimit.model_validate(
            self._request("GET", f"/v1/users/{username}/spending-limit")
        )

    def set_user_spending_limit(
        self,
        username: str,
        *,
        usd_per_month: MoneyT | EllipsisType | None = ...,
        max_usd_per_month: MoneyT | EllipsisType | None = ...,
        alert_at: Sequence[float] | None = None,
    ) -> SpendingLimit:
        """Admin only: set a user's limit (`usd_per_month`) and/or the cap on what they may set
        themselves (`max_usd_per_month`); `None` removes one, `...` (the default) leaves it."""
        body: dict[str, Any] = {}
        if not isinstance(usd_per_month, EllipsisType):
            body["usd_per_month"] = None if usd_per_month is None else _money(usd_per_month)
        if not isinstance(max_usd_per_month, EllipsisType):
            body["max_usd_per_month"] = (
                None if max_usd_per_month is None else _money(max_usd_per_month)
            )
        if alert_at is not None:
            body["alert_at"] = list(alert_at)
        if not body:
            raise ValueError(
                "set_user_spending_limit needs usd_per_month, max_usd_per_month or alert_at"
            )
        return SpendingLimit.model_validate(
            self._request("PUT", f"/v1/users/{username}/spending-limit", json_body=body)
        )

    # ---- usage and invoices ------------------------------------------------------------------

    @staticmethod
    def _usage_params(
        start: datetime | str | None,
        end: datetime | str | None,
        group_by: str,
        user: str | None,
        all: bool,
    ) -> dict[str, str]:
        params = {"group_by": group_by}
        if start is not None:
            params["start"] = _instant_param(start)
        if end is not None:
            params["end"] = _instant_param(end)
        if user is not None:
            params["user"] = user
        if all:
            params["all"] = "true"
        return params

    def usage(
        self,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        *,
        group_by: str = "deployment",
        user: str | None = None,
        all: bool = False,
    ) -> Usage:
        """GPU time and tokens in [start, end) (default: this calendar month, UTC, to now),
        grouped by `deployment`, `day`, `gpu`, `api_token` or `adapter`; money as `Decimal`.
        Admins may ask for another `user`'s usage or everyone's (`all=True`)."""
        params = self._usage_params(start, end, group_by, user, all)
        return Usage.model_validate(self._request("GET", "/v1/usage", params=params))

    def usage_csv(
        self,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        *,
        group_by: str = "deployment",
        user: str | None = None,
        all: bool = False,
    ) -> str:
        """The same rows as `usage()`, as the server's CSV text."""
        params = self._usage_params(start, end, group_by, user, all)
        return self._text("/v1/usage.csv", params)

    def invoices(self, *, user: str | None = None) -> list[InvoiceSummary]:
        """Your weekly invoices, newest first (admins: another `user`'s)."""
        body = self._request("GET", "/v1/invoices", params={"user": user} if user else None)
        return [InvoiceSummary.model_validate(i) for i in _unwrap_list(body, "invoices")]

    def invoice(self, invoice_id: str) -> Invoice:
        """One invoice with its lines; another user's is a 404 (`ModelhostAPIError`)."""
        return Invoice.model_validate(self._request("GET", f"/v1/invoices/{invoice_id}"))

    def invoice_html(self, invoice_id: str) -> str:
        """The invoice as a printable HTML page."""
        return self._text(f"/v1/invoices/{invoice_id}.html", None)

    def _text(self, path: str, params: Mapping[str, Any] | None) -> str:
        try:
            resp = self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise self._connection_error(exc) from exc
        if resp.is_error:
            raise error_from_response(resp)
        return resp.text
