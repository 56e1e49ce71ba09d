"""The HTTP server every engine process runs, around any `Generator`.

Routes: GET /health, /info, /stats, /metrics; OpenAI POST /v1/chat/completions,
/v1/completions, GET /v1/models (`openai_api`); LoRAX POST /generate, /generate_stream, /
(`lorax_api`). Errors always come back in the surface's own JSON shape, never as a stack trace.
The app does not start the generator: the process entry point (`__main__`) runs
`generator.start()` in the background while /health answers 503.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

import modelhost
from modelhost.engine import lorax_api, openai_api
from modelhost.engine.http_core import ApiError, EngineState
from modelhost.engine.metrics import EngineMetrics
from modelhost.engine.protocol import Generator
from modelhost.engine.schemas_openai import MAX_STOP_SEQUENCES

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS_CAP = 4096
_LORAX_PATHS = frozenset({"/", "/generate", "/generate_stream", "/info", "/health", "/ping"})
_UNHEALTHY = {"error": "unhealthy", "error_type": "healthcheck"}


class StartupError(Exception):
    """`Generator.start()` (or building the generator) failed for a reason a user can act on.

    The engine process prints the message verbatim on its fatal line, and the control plane
    shows it as the deployment's fail_reason, so write it for the user ("weights not found at
    /x"), not for a developer.
    """


def _error_response(request: Request, err: ApiError) -> JSONResponse:
    if request.url.path in _LORAX_PATHS:
        return lorax_api.lorax_error_response(err)
    return openai_api.openai_error_response(err)


def create_app(
    generator: Generator,
    *,
    served_model_name: str,
    max_batch_size: int,
    engine_name: str = "unknown",
    max_waiting: int | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS_CAP,
) -> FastAPI:
    """Build the engine's app. `max_waiting` bounds the requests admitted beyond the batch
    (default 4 * max_batch_size); more get 429 "Model is overloaded". `default_max_tokens`
    caps max_tokens when a chat/LoRAX request omits it (the default is the room left in the
    context)."""
    waiting = 4 * max_batch_size if max_waiting is None else max_waiting
    state_box: list[EngineState] = []
    metrics = EngineMetrics(generator.stats, lambda: state_box[0].in_flight)
    state = EngineState(
        generator=generator,
        served_model_name=served_model_name,
        max_batch_size=max_batch_size,
        max_in_flight=max_batch_size + waiting,
        default_max_tokens=default_max_tokens,
        metrics=metrics,
        engine_name=engine_name,
    )
    state_box.append(state)

    app = FastAPI(title=f"modelhost engine ({engine_name})", version=modelhost.__version__)
    app.state.engine = state

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        # Raised before a GenerationResponse exists (body, parameters): count it here.
        state.metrics.request_count.inc()
        state.metrics.observe_failure(exc.kind)
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(request, ApiError(400, "Invalid request."))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found" if exc.status_code == 404 else "validation"
        err = ApiError(exc.status_code, str(exc.detail), kind=kind, code=kind)
        return _error_response(request, err)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        err = ApiError(500, "Internal error in the engine.", kind="internal", code="internal")
        return _error_response(request, err)

    # LoRAX answers health checks on / and /ping too.
    @app.get("/health")
    @app.get("/ping")
    @app.get("/")
    async def health() -> Response:
        if generator.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse(_UNHEALTHY, status_code=503)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        s = generator.stats()
        busy_s, uptime_s = state.busy.read()
        return {
            "running": s.running,
            "waiting": s.waiting,
            "max_batch_size": s.max_batch_size,
            "adapters_resident": sum(1 for a in s.adapters if a.resident),
            "busy_s": busy_s,
            "uptime_s": uptime_s,
            **s.runtime,
        }

    @app.get("/v1/adapters")
    async def adapters() -> dict[str, Any]:
        """Every adapter this engine has loaded: resident or not, in use, load times."""
        return {
            "object": "list",
            "data": [dataclasses.asdict(a) for a in generator.stats().adapters],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        ctx = generator.context_length
        runtime = generator.stats().runtime
        return {
            "model_id": generator.model_id,
            "served_model_name": served_model_name,
            "engine": engine_name,
            "model_sha": None,
            "model_dtype": runtime.get("dtype"),
            "model_device_type": runtime.get("device"),
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": max_batch_size,
            "max_waiting_requests": waiting,
            "max_best_of": 1,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_length": ctx - 1,
            "max_total_tokens": ctx,
            "default_max_new_tokens": default_max_tokens,
            "ready": generator.ready,
            "version": modelhost.__version__,
            "sha": None,
            "docker_label": None,
        }

    app.include_router(openai_api.build_router(state))
    app.include_router(lorax_api.build_router(state))
    return app
