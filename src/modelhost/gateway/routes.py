"""Inference routes: OpenAI-compatible (`/v1/openai/...` and `/v1/...`) and LoRAX-compatible
per-deployment routes (`/deployments/<username>/<model_name>/...`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from modelhost.directory.snapshot import Snapshot
from modelhost.domain.status import (
    NO_CAPACITY_RETRY_AFTER_S,
    DeploymentStatus,
    DesiredState,
    refuses_for_capacity,
)
from modelhost.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
)
from modelhost.gateway.context import GatewayServices
from modelhost.gateway.core import Gateway
from modelhost.gateway.drain import shutting_down
from modelhost.gateway.lorax_bridge import is_lorax_path, lorax_call
from modelhost.gateway.proxy import ClientGone, ForwardResult, Upstream, forward
from modelhost.gateway.resolve import (
    Target,
    adapter_not_found,
    model_not_found,
    resolve_adapter_on,
    resolve_model,
    resolve_path,
    visible_models,
)
from modelhost.gateway.usage_meter import ask_for_usage
from modelhost.gateway.validate import check_inference
from modelhost.store.users import Principal
from modelhost.web.auth import authenticate, bearer_token
from modelhost.web.errors import Shape, render, status_of
from modelhost.web.openapi import LORAX_INFERENCE, OPENAI_INFERENCE, errors

router = APIRouter()
# What a LoRAX /health of a deployment without a ready replica suggests before asking again.
HEALTH_RETRY_AFTER_S = 5


def _services(request: Request) -> GatewayServices:
    services: GatewayServices = request.app.state.services
    return services


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _body(request: Request, limit: int) -> dict[str, Any]:
    """The JSON object of the request, read up to `limit` bytes (a chunked body is counted as
    it arrives, so no more than the cap is ever held), parsed by the same parser and with the
    same nesting limit as the engine's: what passes here, the engine can read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = pydantic_core.from_json(raw or b"null")
    except ValueError as exc:
        nested = "recursion limit" in str(exc)
        reason = ": nested too deeply" if nested else ""
        raise InvalidRequest(f"the request body is not valid JSON{reason}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


async def _principal(request: Request) -> Principal:
    return await authenticate(_services(request), bearer_token(request))


async def _resolved(
    request: Request, resolve: Callable[[Snapshot], Target | None], missing: Callable[[], NotFound]
) -> Target:
    """What `resolve` finds in the directory; on a miss, in the directory as re-checked now
    (it may have been created a moment ago, perhaps by another server process)."""
    directory = _services(request).directory
    target = resolve(directory.snapshot)
    if target is None:
        target = resolve(await directory.fresh())
    if target is None:
        raise missing()
    return target


def _check_servable(target: Target) -> None:
    if target.desired_state == DesiredState.STOPPED.value:
        raise Unavailable(
            f"deployment {target.full_name} is stopped; start it with "
            f"POST /deploy/{target.deploy_id}/start",
            code="deployment_stopped",
        )
    if target.status == DeploymentStatus.ERRORED.value:
        raise Unavailable(
            f"deployment {target.full_name} failed to start: {target.fail_reason}",
            code="deployment_errored",
        )
    # No replica serves or starts and none can be placed: holding the request for a cold start
    # would only end in cold_start_timeout.
    pending_reason = target.pending_reason
    if refuses_for_capacity(target.status, pending_reason):
        raise Unavailable(
            f"deployment {target.full_name} has no replica and cannot start one now: "
            f"{pending_reason}; retry later",
            code="no_capacity",
            retry_after=NO_CAPACITY_RETRY_AFTER_S,
        )


async def _proxy(
    request: Request,
    who: Principal,
    target: Target,
    path: str,
    body: dict[str, Any],
    style: Shape,
) -> Response:
    # Checked before anything is admitted: an invalid request takes no slot, starts nothing.
    stream = check_inference(path, body)
    _check_servable(target)
    gateway = _gateway(request)
    # Metered once per client request, however many times the proxy retries it.
    request_id = uuid.uuid4().hex
    drop_usage_chunk = ask_for_usage(path, body)
    try:
        encoded = json.dumps(body).encode()
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    # The parsed request goes along too: a replica whose engine has no LoRAX routes, or loads
    # adapters only through the gateway (vLLM), gets it translated (see proxy.py).
    # The caller's limits: its maximum cost reserved, its rate limits counted (402 / 429).
    admission = await gateway.caller_limits.admit(who, target, body, len(encoded), request_id)
    up = Upstream(
        path=path,
        body=encoded,
        stream=stream,
        adapter_id=target.adapter_id,
        adapter_name=target.adapter_name,
        lorax=lorax_call(path, body) if is_lorax_path(path) else None,
        openai=None if is_lorax_path(path) else body,
        drop_usage_chunk=drop_usage_chunk,
    )

    def done(result: ForwardResult) -> None:
        admission.finish(result.tokens, gateway.record(target, result, who, request_id))

    try:
        response = await forward(
            request,
            gateway.upstream,
            gateway.pool(target.deploy_id),
            up,
            style,
            gateway.settings.request_timeout_s,
            gateway.drain,
            done,
            gateway.admin,
        )
    except BaseException as exc:
        # Never reached a replica, or failed: the reservation goes back (a no-op when the
        # completion callback settled it already).
        admission.finish(None, 0)
        if isinstance(exc, ServiceError):
            exc.headers = {**admission.headers, **exc.headers}
        raise
    response.headers.update(admission.headers)
    return response


async def _openai(request: Request, path: str) -> Response:
    deploy_id = None
    try:
        who = await _principal(request)
        body = await _body(request, _services(request).settings.max_body_bytes)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("`model` is required: <username>/<model_name>", param="model")
        target = await _resolved(
            request, lambda snap: resolve_model(snap, who, model), lambda: model_not_found(model)
        )
        deploy_id = target.deploy_id
        # Engines know the deployment by its full name; an adapter keeps its own name (the
        # engine learns its id from the x-adapter-id header and echoes `model`).
        body["model"] = target.adapter_name or target.full_name
        return await _proxy(request, who, target, path, body, "openai")
    except ClientGone:
        return Response(status_code=499)
    except ServiceError as exc:
        if deploy_id:
            _gateway(request).record_rejected(deploy_id, status_of(exc))
        return render(exc, "openai")
    except asyncio.CancelledError:
        if not _gateway(request).drain.absorb():
            raise
        return render(shutting_down(), "openai")


@router.post("/v1/openai/chat/completions", responses=OPENAI_INFERENCE)
@router.post("/v1/chat/completions", responses=OPENAI_INFERENCE)
async def chat_completions(request: Request) -> Response:
    return await _openai(request, "/v1/chat/completions")


@router.post("/v1/openai/completions", responses=OPENAI_INFERENCE)
@router.post("/v1/completions", responses=OPENAI_INFERENCE)
async def completions(request: Request) -> Response:
    return await _openai(request, "/v1/completions")


@router.get("/v1/openai/models")
@router.get("/v1/models")
async def models(request: Request) -> Response:
    try:
        who = await _principal(request)
    except ServiceError as exc:
        return render(exc, "openai")
    data = [
        {
            "id": dep.full_name,
            "object": "model",
            "created": int(dep.created_at.timestamp()),
            "owned_by": dep.owner,
            "metadata": {"deploy_id": dep.id, "status": dep.status},
        }
        for dep in visible_models(_services(request).directory.snapshot, who)
    ]
    return JSONResponse({"object": "list", "data": data})


# ---- LoRAX-compatible per-deployment routes ----------------------------------------------


async def _with_adapter(
    request: Request, who: Principal, base: Target, body: dict[str, Any], openai_style: bool
) -> Target:
    """Per-deployment requests name an adapter in `model` (OpenAI style; empty or the
    deployment's own name for the base) or in `parameters.adapter_id` (LoRAX)."""
    if openai_style:
        requested = body.get("model") or ""
        if not isinstance(requested, str):
            raise InvalidRequest("`model` must be a string", param="model")
        if requested in ("", base.full_name, base.full_name.split("/", 1)[1]):
            body["model"] = base.full_name
            return base
    else:
        params = body.get("parameters")
        requested = params.get("adapter_id") if isinstance(params, dict) else None
        if not requested:
            return base
        if not isinstance(requested, str):
            raise InvalidRequest("parameters.adapter_id must be a string", param="adapter_id")
    target = await _resolved(
        request,
        lambda snap: resolve_adapter_on(snap, who, base, requested),
        lambda: adapter_not_found(requested, base),
    )
    if not openai_style:
        params = body["parameters"]
        params["adapter_id"] = target.adapter_id
        if params.get("adapter_source") in ("hub", "local", "pbase", "s3"):
            # Adapters are registered objects here; the source was fixed at registration.
            params["adapter_source"] = None
    return target


async def _lookup(request: Request, who: Principal, username: str, model_name: str) -> Target:
    return await _resolved(
        request,
        lambda snap: resolve_path(snap, who, username, model_name),
        lambda: model_not_found(f"{username}/{model_name}"),
    )


async def _deployment(request: Request, username: str, model_name: str) -> Target:
    """The deployment a LoRAX base URL names, as the caller may see it."""
    who = await _principal(request)
    return await _lookup(request, who, username, model_name)


async def _lorax(request: Request, username: str, model_name: str, path: str) -> Response:
    openai_style = path.startswith("/v1/")
    # LoRAX's error shape, but for the OpenAI routes under the deployment's base URL.
    shape: Shape = "openai" if openai_style else "lorax"
    try:
        who = await _principal(request)
        body = await _body(request, _services(request).settings.max_body_bytes)
        base = await _lookup(request, who, username, model_name)
        target = await _with_adapter(request, who, base, body, openai_style)
        return await _proxy(request, who, target, path, body, shape)
    except ClientGone:
        return Response(status_code=499)
    except ServiceError as exc:
        return render(exc, shape)
    except asyncio.CancelledError:
        if not _gateway(request).drain.absorb():
            raise
        return render(shutting_down(), shape)


@router.post("/deployments/{username}/{model_name}", responses=LORAX_INFERENCE)
async def lorax_compat(request: Request, username: str, model_name: str) -> Response:
    """LoRAX's compat route, the one its Python client calls: the engine's `POST /` answers a
    list of one object, or SSE when `stream` is true."""
    return await _lorax(request, username, model_name, "/")


@router.post("/deployments/{username}/{model_name}/generate", responses=LORAX_INFERENCE)
async def lorax_generate(request: Request, username: str, model_name: str) -> Response:
    return await _lorax(request, username, model_name, "/generate")


@router.post("/deployments/{username}/{model_name}/generate_stream", responses=LORAX_INFERENCE)
async def lorax_generate_stream(request: Request, username: str, model_name: str) -> Response:
    return await _lorax(request, username, model_name, "/generate_stream")


@router.post("/deployments/{username}/{model_name}/v1/chat/completions", responses=OPENAI_INFERENCE)
async def lorax_chat(request: Request, username: str, model_name: str) -> Response:
    return await _lorax(request, username, model_name, "/v1/chat/completions")


@router.post("/deployments/{username}/{model_name}/v1/completions", responses=OPENAI_INFERENCE)
async def lorax_completions(request: Request, username: str, model_name: str) -> Response:
    return await _lorax(request, username, model_name, "/v1/completions")


@router.get(
    "/deployments/{username}/{model_name}/health",
    responses=errors(404, 503, notes={503: "no replica ready now (the code says why)"}, lorax=True),
)
async def lorax_health(request: Request, username: str, model_name: str) -> Response:
    """200 when a replica is ready to serve now, as LoRAX answers once its model is loaded.
    A deployment with none (scaled to zero, starting) is a 503 with Retry-After, although a
    generate request would still be served after a cold start."""
    try:
        target = await _deployment(request, username, model_name)
        _check_servable(target)
        if _gateway(request).pool(target.deploy_id).any_endpoint() is None:
            raise Unavailable(
                f"no replica of {target.full_name} is ready (status {target.status}); "
                "a generate request starts one",
                code="no_ready_replica",
                retry_after=HEALTH_RETRY_AFTER_S,
            )
    except ServiceError as exc:
        return render(exc, "lorax")
    return JSONResponse({"status": "ok"})


@router.get("/deployments/{username}/{model_name}/info", responses=errors(404, lorax=True))
async def lorax_info(request: Request, username: str, model_name: str) -> Response:
    try:
        target = await _deployment(request, username, model_name)
    except ServiceError as exc:
        return render(exc, "lorax")
    pool = _gateway(request).pool(target.deploy_id)
    endpoint = pool.any_endpoint()
    info: dict[str, Any] = {"model_id": target.full_name, "status": target.status}
    if endpoint is not None:
        try:
            upstream = await _gateway(request).client.get(endpoint.url + "/info", timeout=5)
            if upstream.status_code == 200:
                info = {**upstream.json(), "model_id": target.full_name}
        except Exception:
            pass
    return JSONResponse(info)


# ---- the inference routes as one dict lookup (see fast_path.py) ---------------------------
Handler = Callable[[Request], Awaitable[Response]]
_OPENAI_PATHS = {
    "/v1/openai/chat/completions": "/v1/chat/completions",
    "/v1/chat/completions": "/v1/chat/completions",
    "/v1/openai/completions": "/v1/completions",
    "/v1/completions": "/v1/completions",
}
# What follows /deployments/<username>/<model_name> -> the engine's path.
_LORAX_PATHS = {
    "": "/",
    "/generate": "/generate",
    "/generate_stream": "/generate_stream",
    "/v1/chat/completions": "/v1/chat/completions",
    "/v1/completions": "/v1/completions",
}


def inference_handler(path: str) -> Handler | None:
    """The handler of a POST to `path` among the inference routes above (the same handler the
    route calls, with the same path parameters), or None for any other path."""
    engine_path = _OPENAI_PATHS.get(path)
    if engine_path is not None:
        return lambda request: _openai(request, engine_path)
    if not path.startswith("/deployments/"):
        return None
    parts = path.split("/", 4)  # "", "deployments", username, model_name[, rest]
    if len(parts) < 4 or not parts[2] or not parts[3]:
        return None
    lorax_path = _LORAX_PATHS.get("/" + parts[4] if len(parts) == 5 else "")
    if lorax_path is None:
        return None
    username, model_name = parts[2], parts[3]
    return lambda request: _lorax(request, username, model_name, lorax_path)
