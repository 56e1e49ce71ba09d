"""Adapters loaded at run time on engines that do not load them themselves (vLLM).

The builtin engine loads a registered adapter when a request names it (`x-adapter-id`). vLLM
serves an adapter only once it was registered through `POST /v1/load_lora_adapter
{"lora_name", "lora_path"}` (with `VLLM_ALLOW_RUNTIME_LORA_UPDATING`), and forgets it on
`POST /v1/unload_lora_adapter {"lora_name"}`. So for such a replica the gateway, before it
forwards a request for an adapter:

- makes sure the adapter is resident there: loaded once per replica and adapter, however many
  requests ask at the same time (they share the one load); a load that fails fails each of
  those requests with a clear error (UpstreamFailed, code `adapter_load_failed`) and leaves
  nothing registered, and the next request tries again;
- keeps at most `max_active_adapters` resident per replica: before a load that would exceed
  it, the least recently used adapters that no request is using are unloaded (an adapter in
  use is never unloaded; if every one is, the replica holds one more until the next load);
- holds the adapter for the request (pool.pin) until the request's slot is released.

The lora name is the adapter id (the folder `<data_dir>/adapters/<adapter_id>` the control
plane writes). The state lives on the pool's per-replica slot (`_Slot.adapters` in LRU order,
`loads`, `unloads`, `adapter_users`); everything runs on the gateway's event loop, so it needs
no locks.

A replica that already has an adapter the gateway does not know of (one it preloaded at start,
or one loaded before a gateway restart) answers the load with "already been loaded": that is
taken as resident. An unload of one the replica does not know is done.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx

from modelhost.engine.adapters import ADAPTER_ID
from modelhost.errors import InvalidRequest, UpstreamFailed
from modelhost.gateway.pool import DeploymentPool, Lease, _Slot

log = logging.getLogger(__name__)

LOAD_PATH = "/v1/load_lora_adapter"
UNLOAD_PATH = "/v1/unload_lora_adapter"
MODELS_PATH = "/v1/models"
ADMIN_TIMEOUT_S = 10.0
ALREADY_LOADED = "has already been loaded"

# Clean-up calls that outlive the request that started them; held until done.
_background: set[asyncio.Task[None]] = set()


def adapter_folder(adapters_root: Path, adapter_id: str) -> Path:
    """Where the control plane put the adapter's files (adapters/files.py `adapters_root`)."""
    if not ADAPTER_ID.fullmatch(adapter_id) or adapter_id in (".", ".."):
        raise InvalidRequest(f"invalid adapter id {adapter_id!r}", param="adapter_id")
    return adapters_root / adapter_id


def _message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:500] or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return str(body)[:500]


class ReplicaAdmin:
    """The gateway's calls to a vLLM replica besides inference: adapter loads and unloads, and
    its context length."""

    def __init__(
        self, client: httpx.AsyncClient, adapters_root: Path, load_timeout_s: float
    ) -> None:
        self._client = client
        self._root = adapters_root
        self._load_timeout_s = load_timeout_s

    # ---- adapters -------------------------------------------------------------------------
    async def ensure(
        self, pool: DeploymentPool, lease: Lease, adapter_id: str, adapter_name: str | None
    ) -> None:
        """Make `adapter_id` resident on the lease's replica and hold it for the request."""
        folder = adapter_folder(self._root, adapter_id)
        slot = lease.slot
        pool.pin(lease, adapter_id)
        while adapter_id not in slot.adapters:
            pending = slot.loads.get(adapter_id)
            if pending is None:
                pending = self._start_load(slot, adapter_id, adapter_name or adapter_id, folder)
            # A request that goes away leaves the load to finish for the others.
            await asyncio.shield(pending)
        slot.adapters.move_to_end(adapter_id)

    def _start_load(
        self, slot: _Slot, adapter_id: str, name: str, folder: Path
    ) -> asyncio.Future[None]:
        task = asyncio.ensure_future(self._load(slot, adapter_id, name, folder))
        slot.loads[adapter_id] = task

        def done(finished: asyncio.Future[None]) -> None:
            if slot.loads.get(adapter_id) is finished:
                del slot.loads[adapter_id]
            if not finished.cancelled():
                finished.exception()  # retrieved: every waiter may have gone

        task.add_done_callback(done)
        return task

    async def _load(self, slot: _Slot, adapter_id: str, name: str, folder: Path) -> None:
        unloading = slot.unloads.get(adapter_id)
        if unloading is not None:
            await unloading
        await self._make_room(slot)
        url = slot.endpoint.url
        body = {"lora_name": adapter_id, "lora_path": str(folder)}
        try:
            response = await self._client.post(
                url + LOAD_PATH, json=body, timeout=self._load_timeout_s
            )
        except httpx.TransportError:
            # It may have been loaded all the same: leave nothing registered.
            self._later(self._unload_quietly(url, adapter_id))
            raise
        if response.status_code == 200 or (
            response.status_code == 400 and ALREADY_LOADED in response.text
        ):
            slot.adapters[adapter_id] = None
            log.info(
                "replica %s: loaded adapter %s (%s)", slot.endpoint.replica_id, name, adapter_id
            )
            return
        why = _message(response)
        log.warning(
            "replica %s: loading adapter %s (%s) failed: HTTP %s %s",
            slot.endpoint.replica_id,
            name,
            adapter_id,
            response.status_code,
            why,
        )
        raise UpstreamFailed(
            f"replica {slot.endpoint.replica_id} could not load adapter {name}: {why}",
            code="adapter_load_failed",
        )

    async def _make_room(self, slot: _Slot) -> None:
        """Unload least recently used adapters nobody uses until the adapters resident and
        loading (this one among them) fit in max_active_adapters."""
        capacity = max(1, slot.endpoint.max_active_adapters)
        while len(slot.adapters) + len(slot.loads) > capacity:
            victim = next((a for a in slot.adapters if not slot.adapter_users.get(a)), None)
            if victim is None:
                return  # all in use: one more for now, evicted at a later load
            await self._unload(slot, victim)

    async def _unload(self, slot: _Slot, adapter_id: str) -> None:
        del slot.adapters[adapter_id]
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.unloads[adapter_id] = done
        try:
            await self._unload_quietly(slot.endpoint.url, adapter_id)
            log.info("replica %s: unloaded adapter %s", slot.endpoint.replica_id, adapter_id)
        finally:
            del slot.unloads[adapter_id]
            done.set_result(None)

    async def _unload_quietly(self, url: str, adapter_id: str) -> None:
        """Unload; a replica that does not have it (404) or does not answer is only logged."""
        try:
            response = await self._client.post(
                url + UNLOAD_PATH, json={"lora_name": adapter_id}, timeout=ADMIN_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            log.warning("unloading adapter %s from %s failed: %r", adapter_id, url, exc)
            return
        if response.status_code not in (200, 404):
            log.warning(
                "unloading adapter %s from %s failed: HTTP %s %s",
                adapter_id,
                url,
                response.status_code,
                _message(response),
            )

    @staticmethod
    def _later(work: Any) -> None:
        task = asyncio.ensure_future(work)
        _background.add(task)
        task.add_done_callback(_background.discard)

    # ---- context length -------------------------------------------------------------------
    async def context_length(self, slot: _Slot) -> int | None:
        """The replica's context length (`max_model_len` of its `/v1/models`), asked once; None
        when it does not say."""
        if slot.context_length is None:
            try:
                response = await self._client.get(
                    slot.endpoint.url + MODELS_PATH, timeout=ADMIN_TIMEOUT_S
                )
                models = response.json().get("data") or []
                lengths = [m.get("max_model_len") for m in models if isinstance(m, dict)]
                known = [n for n in lengths if isinstance(n, int) and n > 0]
            except (httpx.HTTPError, ValueError, AttributeError):
                return None
            if known:
                slot.context_length = min(known)
        return slot.context_length
