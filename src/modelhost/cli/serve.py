"""`modelhost serve`: run the control plane, gateway and reconciler in one process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    # Only `serve` needs pydantic-settings; every other command starts faster without it.
    from modelhost.config import Settings


def build_settings(
    *,
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    database_url: str | None = None,
    gpus: str | None = None,
    cpu_slots: int | None = None,
    config: Path | None = None,
    discover_gpus: bool | None = None,
    backend: str | None = None,
    ray_address: str | None = None,
) -> Settings:
    """Flags given on the command line win over MODELHOST_* variables and the TOML file;
    flags left out don't mask them (hence every default is None)."""
    if config is not None:
        # Settings reads MODELHOST_CONFIG while it builds its sources, so it is set first.
        os.environ["MODELHOST_CONFIG"] = str(config.expanduser())
    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "database_url": database_url,
        "gpus": gpus,
        "cpu_slots": cpu_slots,
        "discover_gpus": discover_gpus,
        "backend": backend,
        "ray_address": ray_address,
    }
    from modelhost.config import Settings

    return Settings(**{k: v for k, v in given.items() if v is not None})


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [8080].")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State directory [~/.modelhost].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="PostgreSQL URL; default SQLite in the data dir.")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help='Virtual GPUs for development, e.g. "A100-80GB:8".')
    ] = None,
    cpu_slots: Annotated[int | None, typer.Option(help="CPU replicas at once [4].")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings file (MODELHOST_CONFIG).")
    ] = None,
    discover_gpus: Annotated[
        bool | None,
        typer.Option("--discover-gpus/--no-discover-gpus", help="Probe nvidia-smi [yes]."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Where replicas run: local (this machine) or ray (a Ray cluster)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="The Ray cluster's address (host:port) for --backend ray."),
    ] = None,
) -> None:
    """Run the modelhost server. Every flag also has a MODELHOST_* environment variable."""
    settings = build_settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        gpus=gpus,
        cpu_slots=cpu_slots,
        config=config,
        discover_gpus=discover_gpus,
        backend=backend,
        ray_address=ray_address,
    )
    from modelhost import requirements

    postgres = (settings.database_url or "").startswith("postgresql")
    extras = (("postgres",) if postgres else ()) + (("ray",) if settings.backend == "ray" else ())
    problems = requirements.unmet(extras)
    if problems:
        typer.echo(f"modelhost cannot start: {problems[0]}", err=True)
        raise typer.Exit(1)
    # Imported here: the server pulls in the whole control plane, which no client command needs.
    from modelhost.serve.process import run

    run(settings)


def register(app: typer.Typer) -> None:
    app.command()(serve)
