"""JSON shapes the API returns (the deploy object of the contract, users, tokens, events)."""

from __future__ import annotations

import copy
from typing import Any

from modelhost.store.clock import iso
from modelhost.store.deployments import shown_status
from modelhost.store.tables import ApiToken, Deployment, Event, User


def deploy_object(dep: Deployment, owner: str) -> dict[str, Any]:
    config = copy.deepcopy(dep.config)
    hf = config.get("weights", {}).get("hf")
    if hf is not None:
        # The token itself is never returned; "***" tells the owner one is set.
        hf["token"] = "***" if dep.hf_token_enc else None
    return {
        "deploy_id": dep.id,
        "model_name": f"{owner}/{dep.model_name}",
        "type": "llm",
        "status": shown_status(dep),
        "fail_reason": dep.fail_reason,
        "created_at": iso(dep.created_at),
        "updated_at": iso(dep.updated_at),
        "instances": {"running": dep.instances_running, "pending": dep.instances_pending},
        "config": config,
        "settings": dict(dep.settings),
        "public": dep.public,
        "autoscaling": {
            "desired_replicas": dep.desired_replicas,
            "reason": dep.scale_reason,
            "pending_reason": dep.pending_reason,
        },
    }


def user_object(user: User, gpus_reserved: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "username": user.username,
        "is_admin": user.is_admin,
        "gpu_limit": user.gpu_limit,
        "created_at": iso(user.created_at),
    }
    if gpus_reserved is not None:
        out["gpus_reserved"] = gpus_reserved
    return out


def token_object(tok: ApiToken, plaintext: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "token_id": tok.id,
        "name": tok.name,
        "prefix": tok.prefix,
        "created_at": iso(tok.created_at),
        "last_used_at": iso(tok.last_used_at),
    }
    if plaintext is not None:
        out["token"] = plaintext
    return out


def event_object(ev: Event) -> dict[str, Any]:
    return {
        "id": ev.id,
        "ts": iso(ev.ts),
        "kind": ev.kind,
        "message": ev.message,
        "data": ev.data,
    }
