"""`modelhost chat MODEL`: stream a chat completion, once (--message) or as a REPL."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from modelhost.cli import output
from modelhost.cli.session import describe_api_error, open_client
from modelhost.client import Client
from modelhost.client.errors import ModelhostAPIError

_REPL_HELP = "Type a message; /reset clears the conversation, /exit (or Ctrl-D) quits."


def _stream_reply(
    client: Client,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int | None,
    temperature: float | None,
) -> str:
    """Print tokens as they arrive and return the whole reply."""
    pieces: list[str] = []
    stream = client.chat_stream(model, messages, max_tokens=max_tokens, temperature=temperature)
    try:
        for delta in stream:
            if delta.content:
                pieces.append(delta.content)
                typer.echo(delta.content, nl=False)
    finally:
        stream.close()
        if pieces:
            typer.echo()
    return "".join(pieces)


def chat(
    model: Annotated[str, typer.Argument(help="<username>/<model_name> or deploy_id:<id>.")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Send one message and exit.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Reply length limit.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
) -> None:
    """Chat with a deployment through the OpenAI-compatible API, streaming the answer."""
    history: list[dict[str, Any]] = []
    if system:
        history.append({"role": "system", "content": system})
    # Generation can take long between tokens on a cold start; the stream has no read timeout.
    with open_client() as client:
        if message is not None:
            _stream_reply(
                client,
                model,
                [*history, {"role": "user", "content": message}],
                max_tokens,
                temperature,
            )
            return
        output.err().print(_REPL_HELP, style="dim", markup=False)
        base = list(history)
        while True:
            try:
                text = input("> ")
            except (EOFError, KeyboardInterrupt):
                typer.echo()
                return
            text = text.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return
            if text == "/reset":
                history = list(base)
                continue
            turn = [*history, {"role": "user", "content": text}]
            try:
                reply = _stream_reply(client, model, turn, max_tokens, temperature)
            except ModelhostAPIError as exc:
                # One failed turn should not end the session; it is left out of the history.
                output.error(describe_api_error(exc))
                continue
            except KeyboardInterrupt:
                typer.echo()
                continue
            history = [*turn, {"role": "assistant", "content": reply}]


def register(app: typer.Typer) -> None:
    app.command()(chat)
