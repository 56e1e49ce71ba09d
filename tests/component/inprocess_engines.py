"""The component tier's backend: the fake backend, with each replica's engine running in this
process. The replica's runtime builds the same command line the local backend would run; it is
parsed and the engine app built here, then served by uvicorn on 127.0.0.1 in a thread. No engine
process runs, yet the gateway forwards to real engine HTTP; real processes are the e2e tier's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Collection
from typing import Any

import uvicorn

from modelhost.domain.replicas import Device
from modelhost.engine.__main__ import build_generator, describe_failure, split_server_flags
from modelhost.engine.args import parse
from modelhost.engine.protocol import Generator
from modelhost.engine.server import create_app
from modelhost.orchestrator.backends.base import ReplicaStartSpec
from modelhost.runtimes import RuntimeConfigError, resolve
from tests.fake_backend import FakeBackend, LaunchFailed

# A bound against an engine that never comes up, not a performance expectation.
STARTUP_DEADLINE_S = 60.0


class _ServedEngine:
    def __init__(self, generator: Generator, app: object) -> None:
        self.generator = generator
        config = uvicorn.Config(app, log_level="warning", lifespan="off")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.up = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def start(self) -> int:
        """Load the engine (as the process would before /health answers 200), then serve."""
        self.thread.start()
        if not self.up.wait(STARTUP_DEADLINE_S):
            self.stop()
            raise LaunchFailed(f"did not become ready within {STARTUP_DEADLINE_S:g} s")
        if self.error is not None:
            self.stop()
            raise LaunchFailed(describe_failure(self.error))
        return self.port

    async def _main(self) -> None:
        try:
            await self.generator.start()
        except Exception as exc:
            self.error = exc
            self.up.set()
            return
        serving = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not (self.server.started or serving.done()):
            await asyncio.sleep(0.01)
        self.up.set()
        await serving
        with contextlib.suppress(Exception):
            await self.generator.close()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STARTUP_DEADLINE_S)
        self.sock.close()


class _NoGenerator:
    """For an app that is a whole engine by itself (a fake vLLM server)."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


# Builds the ASGI app a replica serves in place of vLLM's OpenAI server.
FakeVllmApp = Callable[[ReplicaStartSpec], Any]


class InProcessBackend(FakeBackend):
    """Replicas report ready at the first observation after they serve.

    `fake_vllm`: replicas of the engines in `fake_vllm_engines` serve the app it builds (a
    stand-in for vLLM's OpenAI server) instead of modelhost's engine."""

    def __init__(
        self,
        fake_vllm: FakeVllmApp | None = None,
        fake_vllm_engines: Collection[str] = ("vllm",),
    ) -> None:
        super().__init__(auto_ready=True)
        self._engines: dict[str, _ServedEngine] = {}
        self._fake_vllm = fake_vllm
        self._fake_vllm_engines = frozenset(fake_vllm_engines)

    def _launch(self, spec: ReplicaStartSpec, serial: int) -> int:
        launch = spec.launch
        if self._fake_vllm is not None and launch.engine in self._fake_vllm_engines:
            served = _ServedEngine(_NoGenerator(), self._fake_vllm(spec))  # type: ignore[arg-type]
            port = served.start()
            with self._lock:
                self._engines[spec.replica_id] = served
            return port
        devices = [Device(d, launch.gpu_type, i, True) for i, d in enumerate(spec.devices)]
        try:
            argv = resolve(launch.engine).command(launch, 0, devices)
        except RuntimeConfigError as exc:
            raise LaunchFailed(f"could not start the engine: {exc}") from exc
        # argv is `python -m modelhost.engine <flags>`: the engine's own entry point, in here.
        args, _ = split_server_flags(parse(argv[3:]))
        try:
            generator = build_generator(args)
        except Exception as exc:
            raise LaunchFailed(describe_failure(exc)) from exc
        app = create_app(
            generator,
            served_model_name=args.served_model_name,
            max_batch_size=args.max_batch_size,
            engine_name=args.engine,
        )
        engine = _ServedEngine(generator, app)
        port = engine.start()
        with self._lock:
            self._engines[spec.replica_id] = engine
        return port

    def _release(self, replica_id: str) -> None:
        with self._lock:
            engine = self._engines.pop(replica_id, None)
        if engine is not None:
            engine.stop()
