"""The `modelhost serve` application: control-plane API + gateway + control loops in one
process. `create_app(settings)` builds everything; the lifespan starts and stops the loops."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis import asyncio as aioredis
from starlette.routing import Route

from modelhost import __version__
from modelhost.api import (
    routes_adapters,
    routes_deploy,
    routes_limits,
    routes_observe,
    routes_usage,
    routes_users,
)
from modelhost.api.deps import ApiServices
from modelhost.config import Settings
from modelhost.console import pages as console
from modelhost.errors import Forbidden
from modelhost.gateway import redis_limits
from modelhost.gateway import routes as gateway_routes
from modelhost.gateway.context import GatewayServices
from modelhost.gateway.core import Gateway
from modelhost.gateway.fast_path import GatewayFastPath
from modelhost.gateway.limits import Limits
from modelhost.orchestrator.backends.base import Backend
from modelhost.security.auth_throttle import AuthThrottle
from modelhost.security.file_modes import secure_data_dir
from modelhost.serve.bootstrap import bootstrap_admin
from modelhost.serve.control import ControlLoops
from modelhost.serve.services import Services, build_services
from modelhost.web import docs_ui, errors, openapi
from modelhost.web.auth import bearer_token, resolve_principal
from modelhost.web.auth_guard import AuthGuardMiddleware
from modelhost.web.body_limit import BodyLimitMiddleware

log = logging.getLogger(__name__)

# /readyz waits this long for the database before it answers without it.
READYZ_PING_TIMEOUT_S = 1.0


def shared_limits(gateway: Gateway, settings: Settings) -> aioredis.Redis | None:
    """With MODELHOST_REDIS_URL, the gateway's rate-limit counts and spending ledger live in
    Redis, shared with every other server process that names it."""
    if not settings.redis_url:
        return None
    client = redis_limits.connect(settings.redis_url)
    # A reservation outlives any request that could still be running, then is dropped.
    ttl = settings.request_timeout_s + settings.cold_start_timeout_s + 60
    prefix = settings.redis_key_prefix
    gateway.caller_limits = Limits(
        redis_limits.RedisRateCounter(client, prefix),
        redis_limits.RedisSpendBook(client, prefix, ttl),
    )
    return client


class StorePing:
    """The database's liveness for /readyz, bounded in time, with at most one ping in flight:
    probes during a stall neither hang nor pile up threads."""

    def __init__(self, ping: Callable[[], bool], timeout_s: float) -> None:
        self._ping = ping
        self._timeout_s = timeout_s
        self._running: asyncio.Future[bool] | None = None

    async def __call__(self) -> bool:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(self._ping))
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), self._timeout_s)
        except TimeoutError:
            return False


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    services: Services | None = None,
) -> FastAPI:
    # Before anything writes into it: the data dir 0700, its secret files 0600.
    secure_data_dir(settings.data_dir)
    services = services or build_services(settings)
    admin_token = bootstrap_admin(services)
    registry = CollectorRegistry()
    loops = ControlLoops(services, registry, backend)
    gateway = Gateway(settings, loops.on_demand, registry)
    redis = shared_limits(gateway, settings)
    loops.attach_gateway(gateway)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.bind_loop(asyncio.get_running_loop())
        services.directory.start()
        limits = gateway.caller_limits
        try:
            # The ledger's figures before the first request (the database may be down: then
            # the refresher keeps trying).
            await asyncio.wait_for(limits.refresh(services.db), READYZ_PING_TIMEOUT_S * 5)
        except Exception:
            log.warning("spending figures not read at start; retrying in the background")
        refresher = asyncio.create_task(limits.run(services.db))
        await loops.start()
        # What start-up built lives as long as the process: keep it out of the collector's full
        # passes, which otherwise pause every request in flight (~60 ms each, ~130k objects).
        gc.freeze()
        try:
            yield
        finally:
            await loops.stop()
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await limits.drain()
            await gateway.close()
            if redis is not None:
                await redis.aclose()
            await services.directory.stop()
            await asyncio.to_thread(services.token_usage.close)
            services.db.close()

    app = FastAPI(
        title="modelhost",
        version=__version__,
        lifespan=lifespan,
        # The docs pages are added by docs_ui, with assets that need no internet.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    # The routers read the parts they need through these protocols (api/deps.py,
    # gateway/context.py); assigning here makes mypy check that Services provides them.
    _parts: tuple[ApiServices, GatewayServices] = (services, services)
    app.state.services = services
    app.state.gateway = gateway
    app.state.loops = loops
    app.state.admin_token = admin_token
    errors.install(app)
    openapi.install(app)
    docs_ui.install(app)
    app.include_router(routes_users.router)
    app.include_router(routes_observe.router)
    app.include_router(routes_deploy.router)
    app.include_router(routes_adapters.router)
    app.include_router(routes_usage.router)
    app.include_router(routes_limits.router)
    app.include_router(gateway_routes.router)
    # The web console at /ui/ (and / sends there); its pages sign in with a cookie.
    console.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    ping = StorePing(services.db.ping, READYZ_PING_TIMEOUT_S)

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        # Ready = this process should get traffic. Through a database outage it still serves
        # running deployments from its directory snapshot, so it stays ready ("degraded"): a
        # load balancer must not pull every gateway at once when the database stalls.
        db_ok = await ping()
        loops_ok = loops.healthy()
        age = services.directory.age_s()
        if db_ok and loops_ok:
            status, code = "ok", 200
        elif not db_ok and age is not None:
            status, code = "degraded", 200
        else:
            status, code = "unavailable", 503
        return JSONResponse(
            {
                "status": status,
                "store": db_ok,
                "loops": loops_ok,
                # This process holds the leader lease and runs the reconciler and autoscaler
                # (several servers on one database: docs/operations.md).
                "leader": loops.leading,
                "directory_age_s": None if age is None else round(age, 3),
            },
            status_code=code,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        # The series name every tenant's deployments and adapters: for admins only, unless
        # the operator opened it for a scraper.
        if not settings.metrics_public:
            who = await asyncio.to_thread(resolve_principal, services, bearer_token(request))
            if not who.is_admin:
                raise Forbidden("/metrics is for admins only", code="admin_only")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # The gateway caps its own bodies, in its own error shapes; everything else is capped here.
    gateway_paths = [r.path_regex for r in gateway_routes.router.routes if isinstance(r, Route)]
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        exempt=lambda path: any(regex.match(path) for regex in gateway_paths),
    )
    # Inference requests skip the router (gateway/fast_path.py); inside the auth guard.
    app.add_middleware(GatewayFastPath)
    throttle = AuthThrottle(settings.auth_failures_burst, settings.auth_failure_refill_s)
    app.add_middleware(AuthGuardMiddleware, throttle=throttle)
    return app
