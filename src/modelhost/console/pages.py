"""The console's pages: each one calls the same function as the API route it mirrors (so the
rules, validation messages, tenancy and quotas are the API's), and renders the result with
Jinja2. Forms post back here (POST, redirect, GET); htmx polls the live parts (status badges,
events, logs); the charts fetch `metrics.json`, the API's metric history under the session.

Errors: a form's `ValidationError` or `ServiceError` with a `param` is shown next to its field;
another user's object is the 404 page (the API's 404), an admin page the 403 page; a missing or
stale session goes back to the sign-in page.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, ParamSpec, cast

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from modelhost import __version__
from modelhost.api import (
    routes_adapters,
    routes_deploy,
    routes_limits,
    routes_observe,
    routes_usage,
    routes_users,
)
from modelhost.api.deps import ApiServices, get_admin
from modelhost.api.schemas import (
    AdminSpendingLimitIn,
    CreateAdapter,
    CreateLLM,
    CreateToken,
    CreateUser,
    SpendingLimitIn,
    UpdateDeployment,
    UpdateUser,
)
from modelhost.console import session as sessions
from modelhost.domain.autoscaling import AutoscalingSettings, SettingsError
from modelhost.domain.deployments import ENGINES
from modelhost.errors import Kind, ServiceError, Unauthorized
from modelhost.store.users import Principal
from modelhost.web.auth import authenticate
from modelhost.web.errors import as_service_error, status_of

HERE = Path(__file__).resolve().parent
STATIC_URL = "/ui/static"
router = APIRouter(prefix="/ui", include_in_schema=False)
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

# Only this server's own assets; no inline script (the pages' script is a static file), so
# even a value that escaped escaping could not run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
WINDOWS = ("1h", "24h", "7d")
# The knobs the details page offers beyond min/max instances, in the dataclass's order.
KNOBS = [
    f.name
    for f in dataclasses.fields(AutoscalingSettings)
    if f.name not in ("min_instances", "max_instances")
]
# The create form's fields, named as the API's body (nested ones dotted).
CREATE_FIELDS = (
    "model_name",
    "weights",
    "hf.repo",
    "hf.revision",
    "hf.token",
    "local.path",
    "base_model",
    "gpu",
    "num_gpus",
    "max_batch_size",
    "engine",
    "settings.min_instances",
    "settings.max_instances",
)

P = ParamSpec("P")


class _SignIn(Exception):
    """No valid session: back to the sign-in page."""


@dataclasses.dataclass(frozen=True)
class Caller:
    services: ApiServices
    who: Principal
    session: sessions.Session


# --- rendering ----------------------------------------------------------------------------


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    caller: Caller | None = getattr(request.state, "console_caller", None)
    html = _env.get_template(template).render(
        request=request,
        who=caller.who if caller else None,
        csrf=caller.session.csrf if caller else "",
        static=STATIC_URL,
        version=__version__,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=HEADERS)


def _error_page(request: Request, status_code: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", status_code, title=title, message=message)


def _to_sign_in(request: Request) -> Response:
    if request.headers.get("hx-request"):
        # An htmx poll: tell the page to go to the sign-in page itself.
        response: Response = Response(status_code=200, headers={"HX-Redirect": "/ui/login"})
    else:
        response = RedirectResponse("/ui/login", status_code=303)
    sessions.clear_session(response)
    return response


TITLES = {404: "Not found", 403: "Not allowed", 402: "Spending limit reached", 409: "Conflict"}


def page(
    handler: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """Turns what a handler raises into the console's answers: sign-in redirect, 404/403 page,
    or an error page with the API's status and message."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        request = kwargs.get("request")
        assert isinstance(request, Request)
        try:
            return await handler(*args, **kwargs)
        except _SignIn:
            return _to_sign_in(request)
        except (ServiceError, SettingsError) as raised:
            exc = raised if isinstance(raised, ServiceError) else as_service_error(raised)
            assert exc is not None
            if exc.kind is Kind.UNAUTHENTICATED:
                return _to_sign_in(request)
            code = status_of(exc)
            if exc.kind is Kind.NOT_FOUND:
                # The API's word for another user's object too: nothing tells them apart.
                return _error_page(request, 404, "Not found", exc.message)
            return _error_page(request, code, TITLES.get(code, "Error"), exc.message)

    return wrapper


# --- who is calling -----------------------------------------------------------------------


def _services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


async def signed_in(request: Request) -> Caller:
    services = _services(request)
    session = sessions.unseal(services.secrets, request.cookies.get(sessions.COOKIE))
    if session is None:
        raise _SignIn()
    try:
        who = await authenticate(services, session.token)
    except Unauthorized as exc:
        raise _SignIn() from exc
    caller = Caller(services, who, session)
    request.state.console_caller = caller
    return caller


async def signed_in_form(request: Request) -> tuple[Caller, dict[str, str]]:
    """A state-changing POST: a session, and the form with its CSRF value checked (403)."""
    caller = await signed_in(request)
    form = await sessions.form_of(request)
    if not sessions.same(caller.session.csrf, form.get(sessions.CSRF_FIELD)):
        raise _CsrfRefused()
    return caller, form


class _CsrfRefused(ServiceError):
    kind = Kind.FORBIDDEN
    code = "csrf_failed"

    def __init__(self) -> None:
        super().__init__(
            "this form's security token is missing or stale: reload the page and try again"
        )


def require_admin(caller: Caller) -> None:
    get_admin(caller.who)  # Forbidden (the 403 page) for anyone else


def _thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
    return run_in_threadpool(fn, *args, **kwargs)


# --- forms --------------------------------------------------------------------------------


def _number(raw: str) -> Any:
    """A form's text as the JSON number it spells, else as it is (validation names it)."""
    text = raw.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _param(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc if not isinstance(x, int) or len(loc) == 1)


def field_errors(exc: ValidationError | ServiceError | SettingsError) -> dict[str, str]:
    """{field name: message} for the form; `_` for what names no field."""
    if isinstance(exc, ValidationError):
        out: dict[str, str] = {}
        for err in exc.errors():
            key = _param(tuple(err.get("loc", ()))) or "_"
            out.setdefault(key, str(err.get("msg", "invalid")))
        return out
    service = exc if isinstance(exc, ServiceError) else as_service_error(exc)
    assert service is not None
    return {service.param or "_": service.message}


def _known(errors: dict[str, str], fields: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Errors for a field the form lacks go to the top of the form (`_`)."""
    out: dict[str, str] = {}
    for key, message in errors.items():
        target = key if key in fields else "_"
        out[target] = f"{key}: {message}" if target == "_" and key != "_" else message
    return out


def create_body(form: Mapping[str, str]) -> dict[str, Any]:
    """The create form as the body of POST /deploy/llm."""
    body: dict[str, Any] = {
        "model_name": form.get("model_name", "").strip(),
        "gpu": form.get("gpu", "").strip(),
        "engine": form.get("engine", "auto").strip() or "auto",
    }
    for key in ("num_gpus", "max_batch_size"):
        if form.get(key, "").strip():
            body[key] = _number(form[key])
    source = form.get("weights", "")
    if source == "hf":
        body["hf"] = {
            "repo": form.get("hf.repo", "").strip(),
            "revision": form.get("hf.revision", "").strip() or None,
            "token": form.get("hf.token", "").strip() or None,
        }
    elif source == "local":
        body["local"] = {"path": form.get("local.path", "").strip()}
    elif source == "base_model":
        body["base_model"] = form.get("base_model", "").strip()
    settings = {
        key: _number(form[f"settings.{key}"])
        for key in ("min_instances", "max_instances")
        if form.get(f"settings.{key}", "").strip()
    }
    if settings:
        body["settings"] = settings
    return body


def settings_update(form: Mapping[str, str], current: AutoscalingSettings) -> dict[str, Any]:
    """The settings form's changed fields (a PUT sends only what it changes)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(AutoscalingSettings):
        raw = form.get(f.name, "").strip()
        if not raw:
            continue
        value = _number(raw)
        if value != getattr(current, f.name):
            out[f.name] = value
    return out


# --- sign in and out ----------------------------------------------------------------------


@router.get("/")
@page
async def home(request: Request) -> Response:
    await signed_in(request)
    return RedirectResponse("/ui/deployments", status_code=303)


@router.get("/login")
@page
async def login_form(request: Request) -> Response:
    return _login_page(request)


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    csrf = sessions.login_csrf(request)
    response = render(request, "login.html", status_code, login_csrf=csrf, error=error)
    sessions.set_login_csrf(response, request, csrf)
    return response


@router.post("/login")
@page
async def login(request: Request) -> Response:
    form = await sessions.form_of(request)
    expected = request.cookies.get(sessions.LOGIN_COOKIE)
    if not sessions.same(expected, form.get(sessions.CSRF_FIELD)):
        raise _CsrfRefused()
    token = form.get("token", "").strip()
    services = _services(request)
    if not token:
        return _login_page(request, "paste an API token (mh_...)", 422)
    try:
        await authenticate(services, token)
    except Unauthorized:
        return _login_page(request, "this token is not valid (revoked, or mistyped)", 401)
    response = RedirectResponse("/ui/deployments", status_code=303)
    sessions.set_session(response, request, services.secrets, sessions.new_session(token))
    return response


@router.post("/logout")
@page
async def logout(request: Request) -> Response:
    await signed_in_form(request)
    response = RedirectResponse("/ui/login", status_code=303)
    sessions.clear_session(response)
    return response


# --- deployments --------------------------------------------------------------------------


def _all_users(request: Request, caller: Caller) -> bool:
    return caller.who.is_admin and request.query_params.get("all") == "true"


@router.get("/deployments")
@page
async def deployments(request: Request) -> Response:
    caller = await signed_in(request)
    show_all = _all_users(request, caller)
    rows = await _thread(
        routes_deploy.list_deployments, caller.who, caller.services, None, show_all
    )
    return render(request, "deployments.html", deployments=rows, show_all=show_all)


@router.get("/deployments/rows")
@page
async def deployment_rows(request: Request) -> Response:
    caller = await signed_in(request)
    show_all = _all_users(request, caller)
    rows = await _thread(
        routes_deploy.list_deployments, caller.who, caller.services, None, show_all
    )
    return render(request, "_deployment_rows.html", deployments=rows, show_all=show_all)


async def _create_context(caller: Caller) -> dict[str, Any]:
    gpus = await _thread(routes_observe.gpu_availability, caller.who, caller.services)
    catalog = await _thread(routes_observe.catalog_models, caller.who, caller.services)
    return {"gpus": gpus.gpus, "catalog": catalog.models, "engines": ENGINES}


@router.get("/deployments/new")
@page
async def new_deployment(request: Request) -> Response:
    caller = await signed_in(request)
    context = await _create_context(caller)
    defaults = {
        "weights": "none",
        "num_gpus": "1",
        "max_batch_size": "96",
        "engine": "auto",
        "settings.min_instances": "1",
        "settings.max_instances": "1",
    }
    return render(request, "create.html", form=defaults, errors={}, **context)


@router.post("/deployments/new")
@page
async def create_deployment(request: Request) -> Response:
    caller, form = await signed_in_form(request)
    try:
        body = CreateLLM.model_validate(create_body(form))
        created = await _thread(routes_deploy.create_llm, body, caller.who, caller.services)
    except (ValidationError, SettingsError) as exc:
        return await _create_again(request, caller, form, exc)
    except ServiceError as exc:
        if exc.kind is Kind.UNAUTHENTICATED:
            raise
        return await _create_again(request, caller, form, exc)
    return RedirectResponse(f"/ui/deployments/{created.deploy_id}", status_code=303)


async def _create_again(
    request: Request,
    caller: Caller,
    form: Mapping[str, str],
    exc: ValidationError | ServiceError | SettingsError,
) -> Response:
    errors = _known(field_errors(exc), CREATE_FIELDS)
    if "hf" in field_errors(exc) or "local" in field_errors(exc):
        errors["weights"] = errors.pop("_", "")
    shown = {k: v for k, v in form.items() if k not in ("hf.token", sessions.CSRF_FIELD)}
    context = await _create_context(caller)
    status_code = status_of(exc) if isinstance(exc, ServiceError) else 422
    return render(request, "create.html", status_code, form=shown, errors=errors, **context)


async def _details(
    request: Request,
    caller: Caller,
    deploy_id: str,
    *,
    errors: dict[str, str] | None = None,
    action_error: str | None = None,
    status_code: int = 200,
) -> Response:
    dep = await _thread(routes_deploy.get_deployment, deploy_id, caller.who, caller.services)
    settings = dep.settings
    adapters = await _adapters_on(caller, deploy_id)
    return render(
        request,
        "details.html",
        status_code,
        dep=dep,
        settings=dataclasses.asdict(settings),
        knobs=KNOBS,
        windows=WINDOWS,
        errors=errors or {},
        action_error=action_error,
        deploy_json=dep.model_dump_json(indent=2, exclude_unset=True),
        adapters=adapters,
    )


@router.get("/deployments/{deploy_id}")
@page
async def deployment(request: Request, deploy_id: str) -> Response:
    caller = await signed_in(request)
    return await _details(request, caller, deploy_id)


@router.get("/deployments/{deploy_id}/status")
@page
async def deployment_status(request: Request, deploy_id: str) -> Response:
    caller = await signed_in(request)
    dep = await _thread(routes_deploy.get_deployment, deploy_id, caller.who, caller.services)
    return render(request, "_status.html", dep=dep)


@router.get("/deployments/{deploy_id}/object")
@page
async def deployment_object(request: Request, deploy_id: str) -> Response:
    caller = await signed_in(request)
    dep = await _thread(routes_deploy.get_deployment, deploy_id, caller.who, caller.services)
    return render(
        request, "_object.html", deploy_json=dep.model_dump_json(indent=2, exclude_unset=True)
    )


@router.get("/deployments/{deploy_id}/events")
@page
async def deployment_events(request: Request, deploy_id: str) -> Response:
    caller = await signed_in(request)
    found = await _thread(routes_observe.events, deploy_id, caller.who, caller.services, 0, 5000)
    return render(request, "_events.html", events=found.events[-100:])


@router.get("/deployments/{deploy_id}/logs")
@page
async def deployment_logs(request: Request, deploy_id: str) -> Response:
    caller = await signed_in(request)
    found = await _thread(
        routes_observe.logs, deploy_id, request, caller.who, caller.services, None, None, 200
    )
    entries = getattr(found, "entries", [])
    return render(request, "_logs.html", entries=entries)


@router.get("/deployments/{deploy_id}/metrics.json")
@page
async def deployment_metrics(request: Request, deploy_id: str) -> Response:
    caller = await signed_in(request)
    window = request.query_params.get("window", "1h")
    if window not in WINDOWS:
        window = "1h"
    found = await _thread(
        routes_observe.deployment_metrics,
        deploy_id,
        caller.who,
        caller.services,
        cast(Literal["1h", "24h", "7d"], window),
        None,
    )
    return JSONResponse(found.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@router.post("/deployments/{deploy_id}/settings")
@page
async def update_settings(request: Request, deploy_id: str) -> Response:
    caller, form = await signed_in_form(request)
    dep = await _thread(routes_deploy.get_deployment, deploy_id, caller.who, caller.services)
    changed = settings_update(form, dep.settings)
    if changed:
        try:
            body = UpdateDeployment(settings=changed)
            await _thread(
                routes_deploy.update_deployment, deploy_id, body, caller.who, caller.services
            )
        except (ValidationError, SettingsError, ServiceError) as exc:
            if isinstance(exc, ServiceError) and exc.kind in (Kind.NOT_FOUND, Kind.UNAUTHENTICATED):
                raise
            errors = {k.removeprefix("settings."): v for k, v in field_errors(exc).items()}
            code = status_of(exc) if isinstance(exc, ServiceError) else 422
            return await _details(request, caller, deploy_id, errors=errors, status_code=code)
    return RedirectResponse(f"/ui/deployments/{deploy_id}", status_code=303)


# The chat panel's answer waits at most this long (a deployment at zero starts first).
CHAT_TIMEOUT_S = 300.0
CHAT_MAX_TOKENS = 512


async def _adapters_on(caller: Caller, deploy_id: str) -> list[str]:
    found = await _thread(routes_adapters.list_adapters, caller.who, caller.services)
    return [a.name for a in found.adapters if a.base_deploy_id == deploy_id]


@router.post("/deployments/{deploy_id}/chat")
@page
async def chat(request: Request, deploy_id: str) -> Response:
    """The chat panel: one message to the deployment (or one of the caller's adapters on it),
    sent through the app's own OpenAI route with the session's token, in-process (no network):
    admission, metering, rate and spending limits apply as to any API call."""
    caller, form = await signed_in_form(request)
    dep = await _thread(routes_deploy.get_deployment, deploy_id, caller.who, caller.services)
    model = form.get("model", "") or dep.model_name
    if model != dep.model_name and model not in await _adapters_on(caller, deploy_id):
        model = dep.model_name
    message = form.get("message", "").strip()[:8000]
    if not message:
        return render(request, "_chat.html", 422, error="type a message first")
    raw = _number(form.get("max_tokens", "64") or "64")
    max_tokens = min(max(raw, 1), CHAT_MAX_TOKENS) if isinstance(raw, int) else 64
    body = {
        "model": model,
        "messages": [{"role": "user", "content": message}],
        "max_tokens": max_tokens,
    }
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://console.internal", timeout=CHAT_TIMEOUT_S
    ) as client:
        r = await client.post(
            "/v1/openai/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {caller.session.token}"},
        )
    try:
        answer = r.json()
    except ValueError:
        answer = {}
    if r.status_code != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        text = error.get("message") if isinstance(error, dict) else None
        return render(request, "_chat.html", error=f"{r.status_code}: {text or r.text[:300]}")
    choice = (answer.get("choices") or [{}])[0]
    return render(
        request,
        "_chat.html",
        model=model,
        question=message,
        text=(choice.get("message") or {}).get("content", ""),
        usage=answer.get("usage") or {},
    )


ACTIONS: dict[str, Callable[[str, Principal, ApiServices], Any]] = {
    "stop": routes_deploy.stop_deployment,
    "start": routes_deploy.start_deployment,
    "delete": routes_deploy.delete_deployment,
}


@router.post("/deployments/{deploy_id}/{action}")
@page
async def deployment_action(request: Request, deploy_id: str, action: str) -> Response:
    caller, _ = await signed_in_form(request)
    fn = ACTIONS.get(action)
    if fn is None:
        return _error_page(request, 404, "Not found", f"no action {action!r}")
    try:
        await _thread(fn, deploy_id, caller.who, caller.services)
    except ServiceError as exc:
        if exc.kind in (Kind.NOT_FOUND, Kind.UNAUTHENTICATED):
            raise
        return await _details(
            request, caller, deploy_id, action_error=exc.message, status_code=status_of(exc)
        )
    if action == "delete":
        return RedirectResponse("/ui/deployments", status_code=303)
    return RedirectResponse(f"/ui/deployments/{deploy_id}", status_code=303)


# --- adapters -----------------------------------------------------------------------------


async def _adapters_page(
    request: Request,
    caller: Caller,
    *,
    form: Mapping[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    found = await _thread(routes_adapters.list_adapters, caller.who, caller.services)
    bases = await _thread(routes_deploy.list_deployments, caller.who, caller.services, None, False)
    return render(
        request,
        "adapters.html",
        status_code,
        adapters=found.adapters,
        bases=[d.model_name for d in bases],
        form=form or {"source": "hf"},
        errors=errors or {},
    )


@router.get("/adapters")
@page
async def adapters(request: Request) -> Response:
    caller = await signed_in(request)
    return await _adapters_page(request, caller)


@router.post("/adapters")
@page
async def create_adapter(request: Request) -> Response:
    caller, form = await signed_in_form(request)
    source: dict[str, Any] = {}
    if form.get("source") == "local":
        source["local"] = {"path": form.get("local.path", "").strip()}
    else:
        source["hf"] = {
            "repo": form.get("hf.repo", "").strip(),
            "revision": form.get("hf.revision", "").strip() or None,
        }
    try:
        body = CreateAdapter.model_validate(
            {"name": form.get("name", "").strip(), "base": form.get("base", ""), "source": source}
        )
        await _thread(routes_adapters.create_adapter, body, caller.who, caller.services)
    except (ValidationError, ServiceError) as exc:
        if isinstance(exc, ServiceError) and exc.kind is Kind.UNAUTHENTICATED:
            raise
        errors = {k.removeprefix("source."): v for k, v in field_errors(exc).items()}
        errors = _known(errors, ["name", "base", "source", "hf.repo", "hf.revision", "local.path"])
        code = status_of(exc) if isinstance(exc, ServiceError) else 422
        shown = {k: v for k, v in form.items() if k != sessions.CSRF_FIELD}
        return await _adapters_page(request, caller, form=shown, errors=errors, status_code=code)
    return RedirectResponse("/ui/adapters", status_code=303)


@router.post("/adapters/{name}/delete")
@page
async def delete_adapter(request: Request, name: str) -> Response:
    caller, _ = await signed_in_form(request)
    await _thread(routes_adapters.delete_adapter, name, caller.who, caller.services)
    return RedirectResponse("/ui/adapters", status_code=303)


# --- API tokens ---------------------------------------------------------------------------


async def _tokens_page(
    request: Request,
    caller: Caller,
    *,
    created: Any = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    tokens = await _thread(routes_users.list_tokens, caller.who, caller.services)
    return render(
        request,
        "tokens.html",
        status_code,
        tokens=tokens,
        created=created,
        errors=errors or {},
    )


@router.get("/tokens")
@page
async def tokens(request: Request) -> Response:
    caller = await signed_in(request)
    return await _tokens_page(request, caller)


@router.post("/tokens")
@page
async def create_token(request: Request) -> Response:
    caller, form = await signed_in_form(request)
    try:
        body = CreateToken.model_validate({"name": form.get("name", "").strip()})
        created = await _thread(routes_users.create_token, body, caller.who, caller.services)
    except (ValidationError, ServiceError) as exc:
        if isinstance(exc, ServiceError) and exc.kind is Kind.UNAUTHENTICATED:
            raise
        code = status_of(exc) if isinstance(exc, ServiceError) else 422
        errors = _known(field_errors(exc), ["name"])
        return await _tokens_page(request, caller, errors=errors, status_code=code)
    # Shown in this answer only (never in a URL, never again).
    return await _tokens_page(request, caller, created=created)


@router.post("/tokens/{token_id}/revoke")
@page
async def revoke_token(request: Request, token_id: str) -> Response:
    caller, _ = await signed_in_form(request)
    await _thread(routes_users.revoke_token, token_id, caller.who, caller.services)
    return RedirectResponse("/ui/tokens", status_code=303)


# --- usage, invoices, spending limit ------------------------------------------------------

GROUP_BYS = ("deployment", "day", "gpu", "api_token", "adapter")


async def _usage_page(
    request: Request,
    caller: Caller,
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    group_by = request.query_params.get("group_by", "deployment")
    if group_by not in GROUP_BYS:
        group_by = "deployment"
    start = request.query_params.get("start") or None
    end = request.query_params.get("end") or None
    usage_error = None
    try:
        usage = await _thread(
            routes_usage.get_usage, caller.who, caller.services, start, end, group_by, None, False
        )
    except ServiceError as exc:
        if exc.kind is Kind.UNAUTHENTICATED:
            raise
        usage, usage_error = None, exc.message
    invoices = await _thread(routes_usage.list_invoices, caller.who, caller.services, None)
    limit = await _thread(routes_limits.my_spending_limit, caller.who, caller.services)
    return render(
        request,
        "usage.html",
        status_code,
        usage=usage,
        usage_error=usage_error,
        group_by=group_by,
        group_bys=GROUP_BYS,
        start=start or "",
        end=end or "",
        invoices=invoices.invoices,
        limit=limit,
        errors=errors or {},
    )


@router.get("/usage")
@page
async def usage(request: Request) -> Response:
    caller = await signed_in(request)
    return await _usage_page(request, caller)


@router.post("/usage/spending-limit")
@page
async def set_spending_limit(request: Request) -> Response:
    caller, form = await signed_in_form(request)
    raw_alerts = [x.strip() for x in form.get("alert_at", "").split(",") if x.strip()]
    body: dict[str, Any] = {"usd_per_month": form.get("usd_per_month", "").strip() or None}
    if "alert_at" in form:
        body["alert_at"] = [_number(x) for x in raw_alerts]
    try:
        parsed = SpendingLimitIn.model_validate(body)
        await _thread(routes_limits.set_my_spending_limit, parsed, caller.who, caller.services)
    except (ValidationError, ServiceError) as exc:
        if isinstance(exc, ServiceError) and exc.kind is Kind.UNAUTHENTICATED:
            raise
        code = status_of(exc) if isinstance(exc, ServiceError) else 422
        errors = _known(field_errors(exc), ["usd_per_month", "alert_at"])
        return await _usage_page(request, caller, errors=errors, status_code=code)
    return RedirectResponse("/ui/usage", status_code=303)


@router.get("/invoices/{invoice_id}")
@page
async def invoice(request: Request, invoice_id: str) -> Response:
    caller = await signed_in(request)
    found = await _thread(routes_usage.get_invoice, invoice_id, caller.who, caller.services)
    # The API's printable page (self-contained, every value escaped).
    return HTMLResponse(routes_usage.render_html(found), headers=HEADERS)


# --- admin: users and quotas, GPUs --------------------------------------------------------


async def _users_page(
    request: Request,
    caller: Caller,
    *,
    created: Any = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    found = await _thread(routes_users.list_users, caller.who, caller.services)

    def spending() -> dict[str, Any]:
        return {
            u.username: routes_limits.user_spending_limit(u.username, caller.who, caller.services)
            for u in found.users
        }

    return render(
        request,
        "users.html",
        status_code,
        users=found.users,
        spending=await _thread(spending),
        created=created,
        errors=errors or {},
    )


@router.get("/admin/users")
@page
async def users(request: Request) -> Response:
    caller = await signed_in(request)
    require_admin(caller)
    return await _users_page(request, caller)


def _user_errors(exc: ValidationError | ServiceError) -> tuple[int, dict[str, str]]:
    code = status_of(exc) if isinstance(exc, ServiceError) else 422
    return code, _known(field_errors(exc), ["username", "gpu_limit"])


@router.post("/admin/users")
@page
async def create_user(request: Request) -> Response:
    caller, form = await signed_in_form(request)
    require_admin(caller)
    body: dict[str, Any] = {
        "username": form.get("username", "").strip(),
        "is_admin": form.get("is_admin") == "on",
    }
    if form.get("gpu_limit", "").strip():
        body["gpu_limit"] = _number(form["gpu_limit"])
    try:
        parsed = CreateUser.model_validate(body)
        created = await _thread(routes_users.create_user, parsed, caller.who, caller.services)
    except (ValidationError, ServiceError) as exc:
        if isinstance(exc, ServiceError) and exc.kind is Kind.UNAUTHENTICATED:
            raise
        code, errors = _user_errors(exc)
        return await _users_page(request, caller, errors=errors, status_code=code)
    return await _users_page(request, caller, created=created)


@router.post("/admin/users/{username}/quota")
@page
async def update_quota(request: Request, username: str) -> Response:
    caller, form = await signed_in_form(request)
    require_admin(caller)
    try:
        parsed = UpdateUser.model_validate({"gpu_limit": _number(form.get("gpu_limit", ""))})
        await _thread(routes_users.update_user, username, parsed, caller.who, caller.services)
    except (ValidationError, ServiceError) as exc:
        if isinstance(exc, ServiceError) and exc.kind in (Kind.NOT_FOUND, Kind.UNAUTHENTICATED):
            raise
        code, errors = _user_errors(exc)
        return await _users_page(request, caller, errors=errors, status_code=code)
    return RedirectResponse("/ui/admin/users", status_code=303)


@router.post("/admin/users/{username}/spending-limit")
@page
async def update_user_spending(request: Request, username: str) -> Response:
    caller, form = await signed_in_form(request)
    require_admin(caller)
    body = {
        key: form.get(key, "").strip() or None for key in ("usd_per_month", "max_usd_per_month")
    }
    try:
        parsed = AdminSpendingLimitIn.model_validate(body)
        await _thread(
            routes_limits.set_user_spending_limit, username, parsed, caller.who, caller.services
        )
    except (ValidationError, ServiceError) as exc:
        if isinstance(exc, ServiceError) and exc.kind in (Kind.NOT_FOUND, Kind.UNAUTHENTICATED):
            raise
        code = status_of(exc) if isinstance(exc, ServiceError) else 422
        errors = {f"{username}.{k}": v for k, v in field_errors(exc).items()}
        return await _users_page(request, caller, errors=errors, status_code=code)
    return RedirectResponse("/ui/admin/users", status_code=303)


@router.post("/admin/users/{username}/delete")
@page
async def delete_user(request: Request, username: str) -> Response:
    caller, _ = await signed_in_form(request)
    require_admin(caller)
    try:
        await _thread(routes_users.delete_user, username, caller.who, caller.services)
    except ServiceError as exc:
        if exc.kind in (Kind.NOT_FOUND, Kind.UNAUTHENTICATED):
            raise
        code, errors = _user_errors(exc)
        return await _users_page(request, caller, errors=errors, status_code=code)
    return RedirectResponse("/ui/admin/users", status_code=303)


@router.get("/admin/gpus")
@page
async def gpus(request: Request) -> Response:
    caller = await signed_in(request)
    require_admin(caller)
    found = await _thread(routes_observe.gpu_availability, caller.who, caller.services)
    return render(request, "gpus.html", gpus=found.gpus)


# Last: any other /ui/ address is the console's own 404 page.
@router.get("/{rest:path}")
@page
async def unknown(request: Request, rest: str) -> Response:
    return _error_page(request, 404, "Not found", f"no page at /ui/{rest}")


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


_env.filters["dump"] = _dump


def install(app: FastAPI) -> None:
    """Serve the console at /ui/ (its assets under /ui/static/) and send / there."""
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)
