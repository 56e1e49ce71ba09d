"""`python -m modelhost.engine --engine simulator|builtin ...`: one engine replica.

The process listens at once and answers /health with 503 while `generator.start()` loads
weights in the background, then 200. A start that fails prints one line,
`FATAL_PREFIX + reason`, to stderr and exits with FATAL_EXIT_CODE; the orchestrator shows the
reason to the user. SIGTERM (or SIGINT) drains: stop accepting, let in-flight requests finish
within --drain-timeout seconds (default 30), exit 0.

Flags: the common ones of `modelhost.engine.args`, plus `--drain-timeout S` (read here), then
the engine's own flags, which the chosen engine parses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import logging
import math
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from modelhost import requirements
from modelhost.engine.args import FATAL_EXIT_CODE, FATAL_PREFIX, EngineArgs, parse
from modelhost.engine.protocol import Generator
from modelhost.engine.server import StartupError, create_app

log = logging.getLogger("modelhost.engine")

DEFAULT_DRAIN_TIMEOUT_S = 30.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after its graceful shutdown, which would turn a
        # clean drain into death by SIGTERM (exit -15); a drained replica must exit 0.
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _fatal(message: str) -> int:
    line = " ".join(message.split())  # the orchestrator reads exactly one line
    sys.stderr.write(f"{FATAL_PREFIX}{line}\n")
    sys.stderr.flush()
    return FATAL_EXIT_CODE


def describe_failure(exc: BaseException) -> str:
    """The fatal line's reason. StartupError and modelhost's own exception classes (such as the
    builtin engine's weights and options errors) carry messages written for users and are
    shown verbatim; anything else is named by its type."""
    if _user_facing(exc):
        return str(exc)
    return f"the engine failed to start: {type(exc).__name__}: {exc}"


def _user_facing(exc: BaseException) -> bool:
    return isinstance(exc, StartupError) or type(exc).__module__.startswith("modelhost.")


def split_server_flags(args: EngineArgs) -> tuple[EngineArgs, float]:
    """Take the HTTP server's own flags out of `args.extra`; the rest go to the engine."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    ns, rest = p.parse_known_args(list(args.extra))
    return dataclasses.replace(args, extra=tuple(rest)), ns.drain_timeout


def build_generator(args: EngineArgs) -> Generator:
    if args.engine == "simulator":
        from modelhost.engine import simulator

        return simulator.build_generator(args)
    try:
        builtin = importlib.import_module("modelhost.engine.builtin")
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if "modelhost.engine.builtin".startswith(missing):
            raise StartupError("the builtin engine is not part of this installation") from exc
        raise StartupError(
            f"the builtin engine needs the Python package '{missing}': "
            "install modelhost with the 'engine' extra"
        ) from exc
    generator: Generator = builtin.build_generator(args)
    return generator


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    # Listen now: clients that connect while the app is still being set up wait in the
    # backlog instead of being refused.
    sock.listen(2048)
    return sock


async def _run(server: _Server, generator: Generator, sock: socket.socket) -> int:
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    starting = asyncio.create_task(generator.start(), name="generator-start")
    await asyncio.wait((serving, starting), return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if starting.done() and not starting.cancelled():
        exc = starting.exception()
        if exc is None:
            log.info("engine ready")
        else:
            if not _user_facing(exc):
                log.error("generator start failed", exc_info=exc)
            code = _fatal(describe_failure(exc))
            server.should_exit = True
    await serving  # returns after SIGTERM and the drain, or at once after a failed start
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
    with contextlib.suppress(Exception):
        await generator.close()
    return code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            return 0
        return _fatal("invalid engine command line (see the usage message above)")
    args, drain_timeout = split_server_flags(args)
    problems = requirements.unmet(("engine",) if args.engine == "builtin" else ())
    if problems:
        return _fatal(problems[0])
    try:
        generator = build_generator(args)
        sock = _bind(args.host, args.port)
    except Exception as exc:
        if not _user_facing(exc):
            log.error("building the engine failed", exc_info=exc)
        return _fatal(describe_failure(exc))
    app = create_app(
        generator,
        served_model_name=args.served_model_name,
        max_batch_size=args.max_batch_size,
        engine_name=args.engine,
    )
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,  # a log line per request costs more than the request on this path
        # Longer than common client pool idle timeouts, so the server is never the side that
        # closes a connection the client is just reusing.
        timeout_keep_alive=75,
        timeout_graceful_shutdown=max(math.ceil(drain_timeout), 0),
        log_level="info",
    )
    log.info(
        "engine %s for %r listening on %s:%d",
        args.engine,
        args.served_model_name,
        args.host,
        sock.getsockname()[1],
    )
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        return runner.run(_run(_Server(config), generator, sock))


if __name__ == "__main__":
    sys.exit(main())
