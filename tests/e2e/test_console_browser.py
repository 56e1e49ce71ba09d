"""The web console in a real headless Chromium (Debian's `chromium`, driven by Playwright with
`executable_path`; Playwright's own browser download is never used): sign in, create a
simulator deployment through the form (an inline error first), watch it become ready, chat with
it, send traffic, see the six charts draw real points, change max instances, stop, delete, sign
out; a second user cannot see the first one's deployment; a form without its CSRF token is refused;
and no request leaves 127.0.0.1 (every request the browser makes goes through a route that
fails the test for any other host).

`MODELHOST_CONSOLE_SCREENSHOTS=<dir>` saves PNGs of the main pages there (scripts/
console_screenshots.sh uses it for docs/img/).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.component._live_server import LiveServer, modelhost_server
from tests.conftest import auth

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("MODELHOST_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("MODELHOST_CONSOLE_SCREENSHOTS")
TIMEOUT_MS = 30_000

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
)
if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: run `make install-browser` (apt-get install chromium)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Simulator replicas as real engine processes (the local backend): their busy clock is
    # what the GPU-utilisation chart shows for virtual GPUs. Samples every second, so the
    # charts have points within seconds of the traffic.
    with modelhost_server(
        tmp_path_factory.mktemp("mh-console"), real_engines=True, metric_sample_interval_s=1.0
    ) as live:
        yield live


@pytest.fixture(scope="module")
def users(server: LiveServer) -> dict[str, str]:
    tokens = {}
    with httpx.Client(base_url=server.url, headers=auth(server.admin_token)) as admin:
        for name in ("alice", "bob"):
            r = admin.post("/v1/users", json={"username": name, "gpu_limit": 4})
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]
    return tokens


class Guard:
    """Sees every request the browser makes; lets only the test server's through."""

    def __init__(self, base: str) -> None:
        self.origin = urlsplit(base).netloc
        self.allowed: list[str] = []
        self.blocked: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.netloc == self.origin:
            self.allowed.append(url)
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield b
        finally:
            b.close()


def new_page(browser: Any, server: LiveServer) -> tuple[Any, Any, Guard]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    guard = Guard(server.url)
    context.route("**/*", guard)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    # The stop and delete buttons ask first; the user says yes.
    page.on("dialog", lambda dialog: dialog.accept())
    return context, page, guard


def shot(page: Any, name: str, *, full_page: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full_page)


def sign_in(page: Any, server: LiveServer, token: str) -> None:
    page.goto(f"{server.url}/")
    assert page.url.endswith("/ui/login")
    page.fill('input[name="token"]', token)
    page.click('#login-form button[type="submit"]')
    page.wait_for_url("**/ui/deployments")


def traffic(server: LiveServer, token: str, model: str, n: int) -> None:
    def one(i: int) -> int:
        r = httpx.post(
            f"{server.url}/v1/openai/chat/completions",
            headers=auth(token),
            json={
                "model": model,
                "messages": [{"role": "user", "content": f"hello {i}"}],
                "max_tokens": 16,
            },
            timeout=30,
        )
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(n)))
    assert codes == [200] * n, codes


SIX = (
    "requests_per_s",
    "tokens_per_s",
    "inference_time",
    "queue_time_s",
    "replicas",
    "gpu_utilization",
)


def test_the_console_in_a_real_browser(
    browser: Any, server: LiveServer, users: dict[str, str]
) -> None:
    context, page, guard = new_page(browser, server)
    page.goto(f"{server.url}/ui/login")
    shot(page, "console-sign-in")
    sign_in(page, server, users["alice"])

    # Create through the form: an invalid name first, shown next to its field.
    page.click("#new-deployment")
    page.wait_for_url("**/ui/deployments/new")
    page.fill('input[name="model_name"]', "Bad Name")
    page.select_option('select[name="engine"]', "simulator")
    page.select_option('select[name="gpu"]', "A100-80GB")
    page.fill('input[name="max_batch_size"]', "8")
    page.click("#create-submit")
    error = page.locator('.field-error[data-for="model_name"]')
    error.wait_for()
    assert "must match" in error.inner_text()
    # What was chosen stays chosen.
    assert page.input_value('select[name="engine"]') == "simulator"
    shot(page, "console-create-form", full_page=True)
    page.fill('input[name="model_name"]', "web")
    page.click("#create-submit")
    page.wait_for_url("**/ui/deployments/d*")
    deploy_id = page.url.rsplit("/", 1)[-1]

    # The badge follows the status live (htmx polling), without a reload.
    page.wait_for_function(
        "() => document.querySelector('#status-badge').textContent.trim() === 'ready'",
        timeout=90_000,
    )

    # The chat panel: one message through the gateway, the answer swapped in by htmx.
    page.fill('#chat-form input[name="message"]', "What is the capital of France?")
    page.click("#chat-send")
    page.wait_for_selector("#chat-text")
    assert page.inner_text("#chat-text").strip()
    assert page.url.endswith(f"/ui/deployments/{deploy_id}")  # no navigation

    # Traffic through the API; the charts fetch the metric history and draw it.
    traffic(server, users["alice"], "alice/web", 24)
    page.wait_for_function(
        "names => window.mhCharts && names.every(n => (window.mhCharts.points[n] || 0) > 0)",
        arg=list(SIX),
        timeout=90_000,
    )
    assert page.locator(".chart canvas").count() == 6
    points = page.evaluate("() => window.mhCharts.points")
    assert all(points[n] > 0 for n in SIX), points
    # GPU utilisation: the virtual GPUs' engine busy time, labelled as such (never invented).
    assert page.evaluate("() => window.mhCharts.source") == "engine_busy"
    page.wait_for_function("() => document.querySelector('#logs pre.logs') !== null")
    page.wait_for_function(
        "() => document.querySelector('#events').textContent.includes('created')"
    )
    if SHOTS:
        # For the docs: a minute of uneven load, so the charts show a shape, not one point.
        for n in (8, 40, 16, 64, 24, 32):
            traffic(server, users["alice"], "alice/web", n)
            time.sleep(10)
        loaded = page.evaluate("() => window.mhCharts.loaded")
        page.wait_for_function(f"() => window.mhCharts.loaded > {loaded}")
    shot(page, "console-deployment", full_page=True)

    # Another window: the charts redraw from the 24 h series.
    loaded = page.evaluate("() => window.mhCharts.loaded")
    page.click('#windows button[data-window="24h"]')
    page.wait_for_function(f"() => window.mhCharts.loaded > {loaded}")
    assert page.evaluate("() => window.mhCharts.window") == "24h"
    # (Its points are 2-minute buckets: the current one may not be in the series yet.)
    assert page.evaluate("() => window.mhCharts.resolution_s") > 10
    assert page.locator(".chart canvas").count() == 6

    # Max instances 1 -> 2, applied through the API's PUT.
    page.fill('#settings-form input[name="max_instances"]', "2")
    page.click("#save-settings")
    page.wait_for_load_state()
    assert page.input_value('#settings-form input[name="max_instances"]') == "2"
    with httpx.Client(base_url=server.url, headers=auth(users["alice"])) as api:
        assert api.get(f"/deploy/{deploy_id}").json()["settings"]["max_instances"] == 2

    # The list shows it with its badge.
    page.goto(f"{server.url}/ui/deployments")
    assert page.locator(f'tr[data-deploy-id="{deploy_id}"] .badge').inner_text() == "ready"
    shot(page, "console-deployments")

    # Stop (confirmed), watch the badge, then delete.
    page.goto(f"{server.url}/ui/deployments/{deploy_id}")
    page.click("#stop")
    page.wait_for_function(
        "() => document.querySelector('#status-badge').textContent.trim() === 'stopped'"
    )
    page.click("#delete")
    page.wait_for_url("**/ui/deployments")
    assert page.locator(f'tr[data-deploy-id="{deploy_id}"]').count() == 0
    with httpx.Client(base_url=server.url, headers=auth(users["alice"])) as api:
        assert api.get(f"/deploy/{deploy_id}").status_code == 404

    # Usage and the tokens page render for the same user.
    page.goto(f"{server.url}/ui/usage")
    assert page.locator("#spending-limit").count() == 1
    shot(page, "console-usage", full_page=True)
    # The replica's GPU time is on this week's open invoice; its printable page opens.
    page.wait_for_selector("#invoices a")
    page.click("#invoices a")
    page.wait_for_url("**/ui/invoices/*")
    assert "User: alice" in page.content() and "GPU" in page.content()
    page.go_back()

    # Sign out: the pages are closed again.
    page.click("#sign-out")
    page.wait_for_url("**/ui/login")
    page.goto(f"{server.url}/ui/deployments")
    assert page.url.endswith("/ui/login")

    assert guard.blocked == [], guard.blocked
    assert any(u.endswith("/ui/static/vendor/uplot/uPlot.iife.min.js") for u in guard.allowed)
    assert any("/metrics.json?window=1h" in u for u in guard.allowed)
    context.close()


def test_a_second_user_cannot_see_the_first_ones_deployment(
    browser: Any, server: LiveServer, users: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.url, headers=auth(users["alice"])) as api:
        body = {"model_name": "private", "gpu": "A100-80GB", "engine": "simulator"}
        r = api.post("/deploy/llm", json=body)
        assert r.status_code == 201, r.text
        deploy_id = r.json()["deploy_id"]
    context, page, guard = new_page(browser, server)
    sign_in(page, server, users["bob"])
    assert "alice/private" not in page.content()
    response = page.goto(f"{server.url}/ui/deployments/{deploy_id}")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    assert "alice" not in page.content()
    response = page.goto(f"{server.url}/ui/admin/users")
    assert response is not None and response.status == 403
    assert guard.blocked == [], guard.blocked
    context.close()


def test_a_form_without_its_csrf_token_is_refused(
    browser: Any, server: LiveServer, users: dict[str, str]
) -> None:
    context, page, guard = new_page(browser, server)
    sign_in(page, server, users["bob"])
    page.goto(f"{server.url}/ui/tokens")
    # The page's own form, its hidden CSRF field removed (what a forged form would lack).
    page.evaluate("() => document.querySelector('#token-form input[name=csrf_token]').remove()")
    page.fill('#token-form input[name="name"]', "forged")
    with page.expect_navigation() as nav:
        page.click('#token-form button[type="submit"]')
    response = nav.value
    assert response is not None and response.status == 403
    assert "security token" in page.content()
    with httpx.Client(base_url=server.url, headers=auth(users["bob"])) as api:
        assert "forged" not in [t["name"] for t in api.get("/v1/api-tokens").json()]
    # A wrong value is refused the same way.
    page.goto(f"{server.url}/ui/tokens")
    page.evaluate("() => document.querySelector('#token-form input[name=csrf_token]').value = 'x'")
    page.fill('#token-form input[name="name"]', "forged")
    with page.expect_navigation() as nav:
        page.click('#token-form button[type="submit"]')
    assert nav.value is not None and nav.value.status == 403
    # With it, the token is made and shown once.
    page.goto(f"{server.url}/ui/tokens")
    page.fill('#token-form input[name="name"]', "real")
    page.click('#token-form button[type="submit"]')
    page.wait_for_selector("#new-token pre.token")
    assert page.inner_text("#new-token pre.token").startswith("mh_")
    shot(page, "console-tokens")
    assert guard.blocked == [], guard.blocked
    context.close()


def test_admin_pages_in_the_browser(
    browser: Any, server: LiveServer, users: dict[str, str]
) -> None:
    context, page, guard = new_page(browser, server)
    sign_in(page, server, server.admin_token)
    page.goto(f"{server.url}/ui/admin/users")
    assert page.locator('tr[data-user="alice"]').count() == 1
    shot(page, "console-admin-users")
    page.goto(f"{server.url}/ui/admin/gpus")
    assert "A100-80GB" in page.inner_text("#gpu-table")
    shot(page, "console-admin-gpus")
    assert guard.blocked == [], guard.blocked
    context.close()
