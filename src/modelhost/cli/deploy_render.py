"""How deployments, events and GPU offers look in the terminal."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from modelhost.cli import output
from modelhost.client.models import DeployEvent, Deployment, GpuType

# Shown first and in this order by `deploy info`; every other key follows, so fields a newer
# server adds (autoscaling details, ...) are never hidden.
_INFO_ORDER = (
    "deploy_id",
    "model_name",
    "type",
    "status",
    "fail_reason",
    "public",
    "created_at",
    "updated_at",
    "instances",
    "autoscaling",
    "settings",
    "config",
)


def _scale(dep: Deployment) -> str:
    lo = dep.settings.get("min_instances", "?")
    hi = dep.settings.get("max_instances", "?")
    return f"{lo}-{hi}"


def deployments_table(deps: list[Deployment]) -> Any:
    t = output.table("DEPLOY ID", "NAME", "STATUS", "GPU", "INSTANCES", "SCALE", "CREATED")
    for d in deps:
        gpu = d.config.get("gpu", "-")
        num = d.config.get("num_gpus")
        gpu_text = f"{gpu} x{num}" if num and num != 1 else str(gpu)
        t.add_row(
            escape(d.deploy_id),
            escape(d.model_name),
            output.status_text(d.status),
            escape(gpu_text),
            f"{d.instances.running} running, {d.instances.pending} pending",
            _scale(d),
            output.fmt_time(d.created_at),
        )
    return t


def _print_mapping(console: Console, data: Mapping[str, Any], indent: int, keys: list[str]) -> None:
    width = max((len(k) for k in keys), default=0) + 1
    pad = "  " * indent
    for key in keys:
        value = data[key]
        label = f"{pad}{key + ':':<{width}}"
        if isinstance(value, Mapping) and value:
            console.print(f"{pad}{key}:", markup=False)
            _print_mapping(console, value, indent + 1, list(value.keys()))
        elif isinstance(value, list) and value and any(isinstance(v, Mapping) for v in value):
            console.print(f"{label} {json.dumps(value)}", markup=False)
        elif key == "status" and indent == 0:
            console.print(f"{escape(label)} {output.status_text(str(value))}")
        elif key.endswith("_at") and isinstance(value, str | int | float):
            console.print(f"{label} {output.fmt_time(value)}", markup=False)
        else:
            console.print(f"{label} {output.fmt_value(value)}", markup=False)


def print_deployment(console: Console, dep: Deployment) -> None:
    """Every field of the deploy object, nested objects indented."""
    data = dep.model_dump(mode="json")
    data["full_name"] = dep.full_name
    if not data.get("fail_reason"):
        data.pop("fail_reason", None)
    keys = [k for k in _INFO_ORDER if k in data]
    keys += [k for k in data if k not in keys and k != "full_name"]
    _print_mapping(console, data, 0, keys)


def events_table(events: list[DeployEvent]) -> Any:
    t = output.table("TIME", "KIND", "MESSAGE")
    for e in events:
        message = e.message
        extra = {**e.data, **(e.model_extra or {})}
        extra.pop("id", None)
        extra.pop("deploy_id", None)
        if extra:
            details = " ".join(f"{k}={v}" for k, v in extra.items())
            message = f"{message}  ({details})" if message else details
        t.add_row(output.fmt_time(e.ts), escape(e.kind or "-"), escape(message))
    return t


def gpus_table(gpus: list[GpuType]) -> Any:
    t = output.table("GPU", "AVAILABLE", "TOTAL", "USD/HOUR")
    for g in gpus:
        price = "-" if g.usd_per_hour is None else f"{g.usd_per_hour:.2f}"
        t.add_row(escape(g.gpu), output.fmt_value(g.available), output.fmt_value(g.total), price)
    return t


def how_to_call(console: Console, base_url: str, dep: Deployment) -> None:
    """Commands that work as printed after `modelhost login` (greedy decoding: a small model's
    samples at temperature 1 read as noise)."""
    question = "What is the capital of France?"
    body = json.dumps(
        {
            "model": dep.full_name,
            "temperature": 0,
            "messages": [{"role": "user", "content": question}],
        }
    )
    console.print("Call it:", style="bold")
    console.print(
        f'  modelhost chat {dep.full_name} --temperature 0 --message "{question}"', markup=False
    )
    console.print(
        f"  curl {base_url}/v1/openai/chat/completions \\\n"
        '    -H "Authorization: Bearer $(modelhost token)" -H "Content-Type: application/json" '
        "\\\n"
        f"    -d '{body}'",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f'  openai.OpenAI(base_url="{base_url}/v1/openai", api_key=TOKEN)'
        f'.chat.completions.create(model="{dep.full_name}", ...)   # TOKEN: `modelhost token`',
        markup=False,
        soft_wrap=True,
    )
