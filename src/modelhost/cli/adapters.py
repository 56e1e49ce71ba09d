"""`modelhost adapters create | list | get | delete`: LoRA adapters on your deployments."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from modelhost.cli import output
from modelhost.cli.session import open_client

app = typer.Typer(help="Register and manage LoRA adapters.", no_args_is_help=True)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="The adapter's name (called as <you>/<name>).")],
    base: Annotated[str, typer.Option("--base", help="Base deployment: <username>/<name>.")],
    local: Annotated[
        str | None, typer.Option("--local", help="Absolute folder on the server.")
    ] = None,
    hf_repo: Annotated[str | None, typer.Option("--hf-repo", help="Hugging Face repo.")] = None,
    hf_revision: Annotated[str | None, typer.Option("--hf-revision")] = None,
    hf_token: Annotated[
        str | None, typer.Option("--hf-token", envvar="HF_TOKEN", help="For private repos.")
    ] = None,
    public: Annotated[bool, typer.Option("--public", help="Usable by every user.")] = False,
) -> None:
    """Register an adapter (peft LoRA: adapter_config.json + adapter_model.safetensors)."""
    if (local is None) == (hf_repo is None):
        raise typer.BadParameter("give exactly one of --local or --hf-repo")
    hf = {"repo": hf_repo, "revision": hf_revision, "token": hf_token} if hf_repo else None
    with open_client() as client:
        a = client.create_adapter(name, base=base, local=local, hf=hf, public=public)
    output.out().print(
        f"Created adapter {escape(a.name)} ({escape(a.adapter_id)}) on {escape(a.base)}: "
        f"rank {a.rank}, {', '.join(a.target_modules)}. "
        f"Call it with model={escape(a.name)}."
    )


@app.command("list")
def list_() -> None:
    """List your adapters."""
    with open_client() as client:
        adapters = client.list_adapters()
    t = output.table("NAME", "ID", "BASE", "RANK", "MODULES", "PUBLIC", "CREATED")
    for a in adapters:
        t.add_row(
            escape(a.name),
            escape(a.adapter_id),
            escape(a.base),
            str(a.rank or "-"),
            escape(",".join(m.removesuffix("_proj") for m in a.target_modules)),
            "yes" if a.public else "no",
            output.fmt_time(a.created_at),
        )
    output.out().print(t)


@app.command()
def get(name: str) -> None:
    """Show one of your adapters as JSON."""
    with open_client() as client:
        a = client.get_adapter(name)
    typer.echo(json.dumps(a.model_dump(mode="json"), indent=2))


@app.command()
def delete(name: str) -> None:
    """Delete an adapter and its files; replicas stop serving it."""
    with open_client() as client:
        adapter_id = client.delete_adapter(name)
    output.out().print(f"Deleted adapter {escape(name)} ({escape(adapter_id)}).")
