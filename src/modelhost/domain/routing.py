"""What the gateway needs to know about a routable replica (published by the reconciler)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaEndpoint:
    replica_id: str
    deploy_id: str
    url: str  # http://127.0.0.1:PORT
    max_batch_size: int
    generation: int
    # How many LoRA adapters the replica keeps resident (its LRU size).
    max_active_adapters: int = 64
    # The engine the replica runs (a runtime name): the gateway speaks to each in its own way
    # (LoRAX routes translated for engines without them, adapters loaded at run time on vLLM).
    engine: str = "builtin"
