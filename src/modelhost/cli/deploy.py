"""`modelhost deploy ...`: create, list, inspect, update, stop/start and delete deployments."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from modelhost.cli import deploy_render, limits, output
from modelhost.cli.session import CliError, deployment_id, open_client
from modelhost.client import Client
from modelhost.client.models import Deployment

DeployRef = Annotated[str, typer.Argument(help="Deploy id, or <username>/<model_name>.")]

app = typer.Typer(help="Create and manage LLM deployments.", no_args_is_help=True)

EngineArgOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--engine-arg",
        help="Extra engine flag, repeatable; use --engine-arg=--flag for values starting with -.",
    ),
]
RpmOpt = Annotated[
    int | None,
    typer.Option(help="Requests per minute for each caller other than you (live)."),
]
TpmOpt = Annotated[
    int | None, typer.Option(help="Tokens per minute for each caller other than you (live).")
]
PricePromptOpt = Annotated[
    str | None,
    typer.Option(help="USD per 1M prompt tokens charged to callers other than you, e.g. 0.2."),
]
PriceCompletionOpt = Annotated[
    str | None, typer.Option(help="USD per 1M completion tokens charged to other callers.")
]
SettingOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--setting", help="Any autoscaling setting as KEY=VALUE (JSON value), repeatable."
    ),
]


def _parse_settings(pairs: list[str] | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--setting expects KEY=VALUE, got {pair!r}")
        try:
            result[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            result[key.strip()] = raw
    return result


def _hf_token(token: str | None, token_env: str | None, token_stdin: bool) -> str | None:
    given = sum(x is not None and x is not False for x in (token, token_env, token_stdin))
    if given > 1:
        raise CliError("use only one of --hf-token, --hf-token-env, --hf-token-stdin")
    if token_env is not None:
        value = os.environ.get(token_env)
        if not value:
            raise CliError(f"environment variable {token_env} is not set")
        return value
    if token_stdin:
        value = sys.stdin.readline().strip()
        if not value:
            raise CliError("no token on stdin")
        return value
    return token


def _live_status(d: Deployment) -> str:
    """The status, with why it waits when it waits for capacity."""
    if d.pending_reason:
        return f"{d.status} (waiting for capacity: {d.pending_reason})"
    return d.status


def _wait(client: Client, dep: Deployment, timeout: float, poll_interval: float) -> Deployment:
    """Poll until settled, showing the live status: a spinner on a terminal, one line per
    status change otherwise (CI logs, pipes)."""
    console = output.out()
    if console.is_terminal:
        with console.status(f"{dep.deploy_id}: {dep.status}") as spinner:

            def show(d: Deployment) -> None:
                reason = f" ({escape(d.pending_reason)})" if d.pending_reason else ""
                spinner.update(f"{escape(d.deploy_id)}: {output.status_text(d.status)}{reason}")

            return client.wait_until_settled(
                dep.deploy_id, timeout, poll_interval=poll_interval, on_update=show
            )
    seen = [_live_status(dep)]
    console.print(f"waiting: {seen[0]}", markup=False)

    def log_change(d: Deployment) -> None:
        if _live_status(d) != seen[-1]:
            seen.append(_live_status(d))
            if not d.settled:
                console.print(f"waiting: {seen[-1]}", markup=False)

    return client.wait_until_settled(
        dep.deploy_id, timeout, poll_interval=poll_interval, on_update=log_change
    )


@app.command("create-llm")
def create_llm(
    name: Annotated[
        str, typer.Option("--name", "--model", "-m", help="Deployment name (model_name).")
    ],
    gpu: Annotated[str, typer.Option(help="GPU type (see `deploy gpus`), or CPU.")] = "CPU",
    num_gpus: Annotated[int, typer.Option(help="GPUs per replica (1-8).")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Concurrent requests per replica.")] = 96,
    hf_repo: Annotated[str | None, typer.Option(help="Hugging Face repo ORG/NAME.")] = None,
    hf_revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    hf_token: Annotated[
        str | None, typer.Option(help="HF read token (visible in `ps`; prefer --hf-token-env).")
    ] = None,
    hf_token_env: Annotated[
        str | None, typer.Option(help="Read the HF token from this environment variable.")
    ] = None,
    hf_token_stdin: Annotated[
        bool, typer.Option("--hf-token-stdin", help="Read the HF token from stdin.")
    ] = False,
    local: Annotated[
        str | None, typer.Option(help="Model folder or .gguf file on the server.")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option(help="A catalog model (see `modelhost models list`).")
    ] = None,
    engine: Annotated[str, typer.Option(help="auto, builtin or simulator.")] = "auto",
    engine_arg: EngineArgOpt = None,
    min_instances: Annotated[int | None, typer.Option(help="Replicas kept running.")] = None,
    max_instances: Annotated[int | None, typer.Option(help="Autoscaling ceiling.")] = None,
    setting: SettingOpt = None,
    public: Annotated[bool, typer.Option("--public", help="Let every user call it.")] = False,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    price_prompt: PricePromptOpt = None,
    price_completion: PriceCompletionOpt = None,
    wait: Annotated[bool, typer.Option(help="Wait until the status settles.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 900.0,
    poll_interval: Annotated[float, typer.Option(hidden=True)] = 1.0,
) -> None:
    """Create a deployment and (by default) wait until it is ready, standby or errored."""
    token = _hf_token(hf_token, hf_token_env, hf_token_stdin)
    if hf_repo is None and (token is not None or hf_revision is not None):
        raise CliError("--hf-revision and the HF token options need --hf-repo")
    hf = None
    if hf_repo is not None:
        hf = {"repo": hf_repo, "revision": hf_revision, "token": token}
    settings = _parse_settings(setting)
    if min_instances is not None:
        settings["min_instances"] = min_instances
    if max_instances is not None:
        settings["max_instances"] = max_instances
    rate_limits = limits.rate_limits_from(rpm, tpm, False)
    pricing = limits.pricing_from(price_prompt, price_completion, False)
    console = output.out()
    with open_client() as client:
        dep = client.create_llm(
            name,
            gpu=gpu,
            num_gpus=num_gpus,
            max_batch_size=max_batch_size,
            hf=hf,
            local=local,
            base_model=base_model,
            engine=engine,
            engine_args=engine_arg,
            settings=settings or None,
            public=public,
            pricing=None if pricing is ... else pricing,
            rate_limits=None if rate_limits is ... else rate_limits,
        )
        console.print(f"Created {escape(dep.full_name)}  deploy id: [bold]{dep.deploy_id}[/bold]")
        if wait and not dep.settled:
            dep = _wait(client, dep, timeout, poll_interval)
        console.print(f"status: {output.status_text(dep.status)}")
        if dep.status == "errored":
            output.error(f"deployment failed: {dep.fail_reason or 'no reason given'}")
            output.err().print(f"See `modelhost deploy events {dep.deploy_id}`.", markup=False)
            raise typer.Exit(1)
        deploy_render.how_to_call(console, client.base_url, dep)


@app.command("list")
def list_(
    status: Annotated[
        str | None, typer.Option(help="Comma-separated statuses, e.g. ready,standby.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every user's (admin).")] = False,
) -> None:
    """List deployments."""
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
    with open_client() as client:
        deps = client.list_deployments(status=statuses, all=all_)
    console = output.out()
    if not deps:
        console.print("No deployments.")
        return
    console.print(deploy_render.deployments_table(deps))


@app.command()
def info(deploy_id: DeployRef) -> None:
    """Show every field of a deployment (replicas, autoscaling state, settings, config)."""
    with open_client() as client:
        dep = client.get_deployment(deployment_id(client, deploy_id))
    deploy_render.print_deployment(output.out(), dep)


@app.command()
def update(
    deploy_id: DeployRef,
    min_instances: Annotated[int | None, typer.Option()] = None,
    max_instances: Annotated[int | None, typer.Option()] = None,
    cooldown_s: Annotated[float | None, typer.Option(help="Scale-down cooldown.")] = None,
    scale_up_threshold: Annotated[float | None, typer.Option()] = None,
    setting: SettingOpt = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Rolling replacement.")] = None,
    engine_arg: EngineArgOpt = None,
    clear_engine_args: Annotated[
        bool, typer.Option("--clear-engine-args", help="Set engine_args to [].")
    ] = False,
    hf_revision: Annotated[str | None, typer.Option(help="Rolling replacement.")] = None,
    public: Annotated[
        bool | None, typer.Option("--public/--private", help="Share with every user, or not.")
    ] = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    no_rate_limits: Annotated[
        bool,
        typer.Option("--no-rate-limits", help="Remove the rate limits (then apply --rpm/--tpm)."),
    ] = False,
    price_prompt: PricePromptOpt = None,
    price_completion: PriceCompletionOpt = None,
    no_pricing: Annotated[
        bool, typer.Option("--no-pricing", help="Remove the per-token prices.")
    ] = False,
) -> None:
    """Change settings (live) and/or config (rolling replacement, status `updating`). Rate
    limits and prices apply live; --rpm or a price alone keeps the rest as it is."""
    settings = _parse_settings(setting)
    for key, value in (
        ("min_instances", min_instances),
        ("max_instances", max_instances),
        ("cooldown_s", cooldown_s),
        ("scale_up_threshold", scale_up_threshold),
    ):
        if value is not None:
            settings[key] = value
    config: dict[str, Any] = {}
    if max_batch_size is not None:
        config["max_batch_size"] = max_batch_size
    if engine_arg or clear_engine_args:
        config["engine_args"] = list(engine_arg or [])
    if hf_revision is not None:
        config["hf"] = {"revision": hf_revision}
    wants_limits = rpm is not None or tpm is not None or no_rate_limits
    wants_pricing = price_prompt is not None or price_completion is not None or no_pricing
    if not settings and not config and public is None and not wants_limits and not wants_pricing:
        raise CliError("nothing to update; see `modelhost deploy update --help`")
    with open_client() as client:
        dep_id = deployment_id(client, deploy_id)
        current = client.get_deployment(dep_id) if wants_limits or wants_pricing else None
        rate_limits = limits.rate_limits_from(
            rpm, tpm, no_rate_limits, current.rate_limits if current else None
        )
        pricing = limits.pricing_from(
            price_prompt, price_completion, no_pricing, current.pricing if current else None
        )
        dep = client.update_deployment(
            dep_id,
            settings or None,
            config or None,
            public=public,
            pricing=pricing,
            rate_limits=rate_limits,
        )
    console = output.out()
    console.print(f"Updated {escape(dep.full_name)}: {output.status_text(dep.status)}")
    # Echo what the server now holds for the keys that were asked for (it may normalise them).
    now = [f"{k}={dep.settings.get(k)}" for k in settings]
    now += [f"{k}={dep.config.get(k)}" for k in config if k != "hf"]
    if hf_revision is not None:
        now.append(f"hf.revision={dep.config.get('weights', {}).get('hf', {}).get('revision')}")
    if public is not None:
        now.append(f"public={dep.public}")
    if wants_limits:
        now.append(f"rate_limits={limits.fmt_rate_limits(dep.rate_limits)}")
    if wants_pricing:
        now.append(f"pricing={limits.fmt_pricing(dep.pricing)}")
    console.print("  " + " ".join(now), markup=False)
    if config:
        console.print(
            "  config changes roll out by replacing replicas; "
            f"watch with `modelhost deploy info {dep.deploy_id}`",
            markup=False,
        )


@app.command()
def delete(deploy_id: DeployRef) -> None:
    """Delete a deployment; replicas drain, then stop, and the name is free again."""
    with open_client() as client:
        gone = client.delete_deployment(deployment_id(client, deploy_id))
    output.out().print(f"Deleted {escape(gone)}.")


@app.command()
def stop(deploy_id: DeployRef) -> None:
    """Stop all replicas; the deployment stays until `deploy start`."""
    with open_client() as client:
        dep = client.stop_deployment(deployment_id(client, deploy_id))
    output.out().print(f"{escape(dep.full_name)}: {output.status_text(dep.status)}")


@app.command()
def start(deploy_id: DeployRef) -> None:
    """Start a stopped deployment."""
    with open_client() as client:
        dep = client.start_deployment(deployment_id(client, deploy_id))
    output.out().print(f"{escape(dep.full_name)}: {output.status_text(dep.status)}")


@app.command()
def events(deploy_id: DeployRef) -> None:
    """Status changes, replica starts/exits and scaling decisions, newest last."""
    with open_client() as client:
        evs = client.events(deployment_id(client, deploy_id))
    if not evs:
        output.out().print("No events.")
        return
    output.out().print(deploy_render.events_table(evs))


@app.command()
def gpus() -> None:
    """GPU types this server offers, with availability and price."""
    with open_client() as client:
        offers = client.gpu_availability()
    output.out().print(deploy_render.gpus_table(offers))
